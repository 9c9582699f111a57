"""``stagerd status``: what the running daemon holds."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import click

from stagerd.cli import config_option
from stagerd.core import config as config_mod
from stagerd.core import protocol
from stagerd.core.config import Config
from stagerd.core.errors import StagerdError
from stagerd.core.stores import Store

# Measuring what an intent has written walks its files; past this many the
# walk is not cheap any more and the figure is left out.
MAX_FILES = 100_000


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(config_path: str | None, as_json: bool) -> None:
    """Show the daemon's uptime, intent counts and pending intents.

    Each pending intent is shown with its owner (uid/pid), table, key, age
    and, for objects in local stores, the bytes written so far (measured
    by this command, so only what its user may read). Exit status 1 if no
    daemon answers. Example:

        stagerd status --json | jq '.pending | length'
    """
    cfg = config_mod.load(config_path)
    reply = protocol.call(cfg.socket_path, "status")
    sizes = _Sizes(cfg)
    pending = [
        {**p, "bytes_written": sizes.written(p.get("objects") or [])}
        for p in reply["pending"]
    ]
    if as_json:
        out = {k: reply[k] for k in ("daemon", "counts")}
        out["pending"] = pending
        out["pending_truncated"] = bool(reply.get("pending_truncated"))
        click.echo(json.dumps(out, indent=2))
        return

    d = reply["daemon"]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(reply["counts"].items()))
    click.echo(
        f"stagerd pid {d['pid']}, up {_duration(d['uptime_s'])}, "
        f"socket {d['socket']}"
    )
    click.echo(f"database {d['database']}")
    click.echo(f"intents: {counts or 'none yet'}")
    if not pending:
        click.echo("no pending intents")
        return
    total = reply["counts"].get("pending", len(pending))
    click.echo(f"{total} pending:" if total == len(pending)
               else f"{total} pending, the oldest {len(pending)} shown:")
    for line in _table(pending):
        click.echo(line)


class _Sizes:
    """Bytes written so far under an intent's objects, local stores only."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stores: dict[str, Store | None] = {}

    def store(self, name: str) -> Store | None:
        if name not in self.stores:
            try:
                store: Store | None = Store(self.cfg.store(name))
            except StagerdError:
                store = None
            self.stores[name] = store if store is not None and store.is_local else None
        return self.stores[name]

    def written(self, objects: list[dict[str, Any]]) -> int | None:
        """None when any object is remote, unreadable or too large to walk."""
        if not objects:
            return None
        total = 0
        for o in objects:
            store = self.store(o["store"])
            if store is None:
                return None
            try:
                size = _walk_size(store.full(o["path"]))
            except (StagerdError, OSError):
                return None
            if size is None:
                return None
            total += size
        return total


def _walk_size(path: str) -> int | None:
    """Sum of file sizes under ``path`` (0 if absent), None past MAX_FILES."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not os.path.isdir(path):
        return info.st_size
    total, seen = 0, 0

    def fail(e: OSError) -> None:
        raise e

    for folder, _, files in os.walk(path, onerror=fail):
        for name in files:
            seen += 1
            if seen > MAX_FILES:
                return None
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass  # removed while we looked
    return total


def _table(pending: list[dict[str, Any]]) -> list[str]:
    """Aligned columns; on a terminal the key column shrinks to fit."""
    head = ["INTENT", "KIND", "UID", "PID", "TABLE", "KEY", "AGE", "WRITTEN"]
    rows = [
        [
            p["id"] or "(hidden)",
            p["kind"],
            str(p["uid"]),
            str(p["pid"]),
            f"{p['schema']}.{p['table']}",
            _key(p["key"]),
            _duration(p["age_s"]),
            "-" if p["bytes_written"] is None else _size(p["bytes_written"]),
        ]
        for p in pending
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    if sys.stdout.isatty():
        spare = shutil.get_terminal_size().columns - (sum(widths) + 2 * len(widths))
        key = head.index("KEY")
        if spare < 0:
            widths[key] = max(len("KEY"), widths[key] + spare)
            for r in rows:
                if len(r[key]) > widths[key]:
                    r[key] = r[key][: max(widths[key] - 3, 0)] + "..."
    lines = []
    for r in [head, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    errors = [(p["id"], p["last_error"]) for p in pending if p.get("last_error")]
    lines.extend(f"{i}: last error: {e}" for i, e in errors)
    return lines


def _key(key: dict[str, Any] | None) -> str:
    if key is None:
        return "(hidden)"
    return " ".join(f"{k}={v}" for k, v in key.items()) or "-"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"
