"""``stagerd recover``: resolve abandoned intents now."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from stagerd.cli import config_option, setup_logging
from stagerd.core import config as config_mod
from stagerd.core import protocol
from stagerd.core.config import Config
from stagerd.core.errors import DaemonUnavailable
from stagerd.daemon.server import LOCK_NAME, Daemon, take_lock


async def _offline(cfg: Config) -> dict[str, Any]:
    daemon = Daemon(cfg)
    await daemon.start(listen=False)
    try:
        decided = await daemon.sweep(force=True)
        return {"decided": decided, "pending": len(daemon.pending)}
    finally:
        await daemon.close()


def run(cfg: Config) -> tuple[str, dict[str, Any]]:
    """Ask the running daemon, or open the log if no daemon holds it."""
    try:
        return "daemon", protocol.call(cfg.socket_path, "recover")
    except DaemonUnavailable:
        pass
    lock = take_lock(cfg.state_dir)
    if lock is None:
        raise DaemonUnavailable(
            f"a daemon holds {cfg.state_dir / LOCK_NAME} but does not answer at "
            f"{cfg.socket_path}; is it starting?"
        )
    lock.close()  # the offline daemon takes it again
    return "log", asyncio.run(_offline(cfg))


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def recover(config_path: str | None, as_json: bool) -> None:
    """Resolve every pending intent whose owner is dead, and say what was done.

    Works with the daemon running (it is asked to do it) or stopped (the
    intent log is opened directly). Intents of live owners stay pending.
    Example:

        stagerd recover --json
    """
    setup_logging("warning")
    cfg = config_mod.load(config_path)
    via, reply = run(cfg)
    if as_json:
        click.echo(json.dumps(
            {"via": via, "decided": reply["decided"], "pending": reply["pending"]},
            indent=2,
        ))
        return
    for d in reply["decided"]:
        extra = f" ({d['error']})" if d.get("error") else ""
        click.echo(f"{d['id']}: {d['state']}{extra}")
    click.echo(f"{len(reply['decided'])} decided, {reply['pending']} still pending "
               f"(resolved via the {via})")
