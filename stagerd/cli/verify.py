"""``stagerd verify``: check rows, stored objects and decision records."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from stagerd.cli import config_option, setup_logging
from stagerd.core import config as config_mod
from stagerd.daemon.verify import Report
from stagerd.daemon.verify import verify as run_verify


class _Bar:
    """A progress bar on a terminal's stderr, made once the total is known."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown = 0

    def __call__(self, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        if self.bar is None:
            self.bar = click.progressbar(
                length=max(total, 1), label="verifying", file=sys.stderr
            )
            self.bar.__enter__()
        self.bar.update(done - self.shown)
        self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _show(report: Report) -> None:
    schemas = ", ".join(report.schemas) or "none"
    click.echo(f"checked {len(report.schemas)} schema(s) ({schemas}): "
               f"{report.rows} rows with objects, {report.objects} objects, "
               f"{report.files} files")
    if report.intent_log_present:
        click.echo(f"intent log {report.intent_log}: {report.pending_intents} "
                   "pending intent(s)")
    else:
        click.echo(f"intent log {report.intent_log} is absent (a new or replaced "
                   "disk?): writes in flight cannot be told from strays")
    for item in report.in_progress:
        click.echo(f"in progress: {item['schema']}.{item['table']} "
                   f"{item['kind']} intent {item['intent']} ({item['state']}) "
                   f"{item['store']}:{item['path']}, {item['files']} files")
    if report.ok:
        click.echo("no problems found")
        return
    click.echo(f"{len(report.problems)} problem(s):")
    for problem in report.problems:
        for line in problem.lines():
            click.echo(f"  {line}")


@click.command()
@config_option
@click.argument("schema", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify(config_path: str | None, schema: str | None, as_json: bool) -> None:
    """Check that rows, stored objects and decision records agree; read-only.

    For SCHEMA, or every schema: each object a row holds exists and matches
    its manifest; no stored object lies outside a row's objects unless this
    host's intent log shows it in progress; no row holds an object whose
    intent the ledger decided aborted or never decided. Nothing is written
    anywhere. Exit status 0 if all is well, 1 if a problem was found.
    Example:

        stagerd verify imaging --json | jq '.problems[] | .kind'
    """
    setup_logging("warning")
    cfg = config_mod.load(config_path)
    bar = _Bar()
    try:
        report = run_verify(cfg, schema, progress=bar)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _show(report)
    sys.exit(0 if report.ok else 1)
