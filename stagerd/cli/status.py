"""``stagerd status``: what the running daemon holds."""

from __future__ import annotations

import json

import click

from stagerd.cli import config_option
from stagerd.core import config as config_mod
from stagerd.core import protocol


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(config_path: str | None, as_json: bool) -> None:
    """Show the daemon's state and its pending intents.

    Exit status 1 if no daemon answers. Example:

        stagerd status --json | jq '.pending | length'
    """
    cfg = config_mod.load(config_path)
    reply = protocol.call(cfg.socket_path, "status")
    if as_json:
        click.echo(json.dumps(
            {k: reply[k] for k in ("daemon", "counts", "pending")}, indent=2
        ))
        return

    d = reply["daemon"]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(reply["counts"].items()))
    click.echo(
        f"stagerd pid {d['pid']}, up {d['uptime_s']:.0f} s, socket {d['socket']}"
    )
    click.echo(f"database {d['database']}")
    click.echo(f"intents: {counts or 'none yet'}")
    pending = reply["pending"]
    if not pending:
        click.echo("no pending intents")
        return
    click.echo(f"{len(pending)} pending:")
    for p in pending:
        paths = ", ".join(o["path"] for o in p["objects"])
        click.echo(
            f"  {p['id']} {p['kind']} {p['schema']}.{p['table']} {p['key']} "
            f"uid={p['uid']} pid={p['pid']} age={p['age_s']:.1f}s {paths}"
        )
