"""The `modeld` command group and what its commands share: the data-root option, one-line
failures."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from modeldconn._dataroot import ENV_DATA_ROOT

__all__ = ["cli", "data_root_option", "fail"]

data_root_option = click.option(
    "--data-root",
    # readable=False: an unreadable root is the daemon's to report (exit 3, or wait for it
    # under systemd), and `lease show` reports it as a corrupt lease, not a usage error
    type=click.Path(path_type=Path, readable=False),
    default=None,
    help=f"Data root (default: ${ENV_DATA_ROOT}, else $XDG_STATE_HOME/modeld).",
)


def fail(message: str, code: int) -> None:
    click.echo(f"modeld: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="modeld", message="modeld %(version)s")
def cli() -> None:
    """modeld: one local-inference daemon per machine, leading by lease."""
