"""``stagerd serve``: run the daemon in the foreground."""

from __future__ import annotations

import asyncio

import click

from stagerd.cli import config_option, setup_logging
from stagerd.core import config as config_mod
from stagerd.daemon.server import Daemon


@click.command()
@config_option
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Least severe log level to print.",
)
def serve(config_path: str | None, log_level: str) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl+C.

    With no config file at all it serves the embedded default: a SQLite
    database and a local object folder under the state dir, and a socket
    in the runtime dir. Example:

        stagerd serve --config /etc/stagerd/stagerd.toml
    """
    setup_logging(log_level)
    cfg = config_mod.load(config_path)
    asyncio.run(Daemon(cfg).run())
