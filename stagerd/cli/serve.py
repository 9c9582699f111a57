"""``stagerd serve``: run the daemon in the foreground."""

from __future__ import annotations

import asyncio

import click

from stagerd.cli import config_option, setup_logging
from stagerd.core import config as config_mod
from stagerd.core.config import LOG_LEVELS
from stagerd.daemon.server import Daemon


@click.command()
@config_option
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Least severe log level to print; overrides daemon.log_level "
    "(default info), also across reloads.",
)
def serve(config_path: str | None, log_level: str | None) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl+C.

    With no config file at all it serves the embedded default: a SQLite
    database and a local object folder under the state dir, and a socket
    in the runtime dir. SIGTERM keeps every pending intent for the next
    start; SIGHUP, or saving the config file, reloads the stores and the
    log level without dropping clients. Under systemd it reports readiness
    and status (Type=notify), pings the watchdog and takes a socket from
    stagerd.socket. Example:

        stagerd serve --config /etc/stagerd/stagerd.toml
    """
    cfg = config_mod.load(config_path)
    # Bad daemon settings stop it here, as one line, not later in a task.
    _ = (cfg.history_days, cfg.socket_group)
    setup_logging(log_level or cfg.log_level)
    asyncio.run(Daemon(cfg, log_level=log_level).run())
