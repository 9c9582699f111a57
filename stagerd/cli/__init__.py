"""The ``stagerd`` command: one small module per subcommand.

The library raises precise errors; this layer turns them into one line on
stderr without a traceback, exit status 1 for failures and 2 for usage.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from stagerd.core.errors import StagerdError

__all__ = ["main"]


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except StagerdError as e:
            click.echo(f"stagerd: {e}", err=True)
            sys.exit(1)


def setup_logging(level: str) -> None:
    """key=value lines; no timestamps under journald, which adds its own."""
    fields = "level=%(levelname)s logger=%(name)s %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fields = "time=%(asctime)s " + fields
    logging.basicConfig(level=level.upper(), format=fields, stream=sys.stderr)


@click.group(cls=_Group)
@click.version_option(package_name="stagerd")
def main() -> None:
    """stagerd: all-or-nothing staged inserts of large objects.

    One daemon per host keeps a durable log of staging intents and cleans
    up whatever a killed client abandoned.
    """


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $STAGERD_CONFIG, ~/.config/stagerd/stagerd.toml, "
    "/etc/stagerd/stagerd.toml).",
)

from stagerd.cli import recover, serve, status, verify  # noqa: E402  (commands)

main.add_command(serve.serve)
main.add_command(status.status)
main.add_command(recover.recover)
main.add_command(verify.verify)
