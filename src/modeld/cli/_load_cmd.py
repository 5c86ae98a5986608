"""`modeld load MODEL` and `modeld unload MODEL`: a model's weights in or out of the running
daemon, now.

Exit codes: 0 done (including "already loaded" and "was not loaded"); 2 a bad argument; 3 no
daemon to talk to, or the daemon refused (the one line says why: ``model_load_timeout``,
``insufficient_memory`` with the sums, ``overloaded`` when every resident model is in use).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

import modeldconn
from modeld._errors import ExitCode
from modeld.cli._commands import _client_orfail
from modeld.cli._group import cli, data_root_option, fail

__all__ = ["load", "unload"]


@cli.command()
@click.argument("model")
@data_root_option
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds the load may take (0: the alias's load_timeout_s, else --load-timeout).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def load(model: str, data_root: Path | None, timeout_s: float, as_json: bool) -> None:
    """Load MODEL's weights on the running daemon now (once, however many ask).

    With --json: {"model", "digest", "already_loaded", "generation", "load_s"}.
    """
    client = _client_orfail(data_root)
    try:
        reply = client.load_model(model, timeout_s=timeout_s)
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)
        return
    finally:
        client.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": reply.facts.name,
                    "digest": reply.facts.digest,
                    "already_loaded": reply.already_loaded,
                    "generation": reply.generation,
                    "load_s": reply.load_s,
                }
            )
        )
    elif reply.already_loaded:
        click.echo(f"{reply.facts.name}: already loaded (generation {reply.generation})")
    else:
        click.echo(
            f"{reply.facts.name}: loaded in {reply.load_s:.2f} s (generation {reply.generation})"
        )


@cli.command()
@click.argument("model")
@data_root_option
@click.option(
    "--park",
    is_flag=True,
    help="Park the model's live sessions first (else the unload is refused while any exist).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def unload(model: str, data_root: Path | None, park: bool, as_json: bool) -> None:
    """Free MODEL's weights on the running daemon. With --park its live sessions park first
    (each restores, loading the weights again, on its next use); without it the unload is
    refused while any session of MODEL holds live KV.

    With --json: {"model", "unloaded", "sessions_parked", "generation"}.
    """
    client = _client_orfail(data_root)
    try:
        reply = client.unload_model(model, park_sessions=park)
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)
        return
    finally:
        client.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": model,
                    "unloaded": reply.unloaded,
                    "sessions_parked": reply.sessions_parked,
                    "generation": reply.generation,
                }
            )
        )
    elif reply.unloaded:
        click.echo(
            f"{model}: unloaded, {reply.sessions_parked} sessions parked "
            f"(generation {reply.generation})"
        )
    else:
        click.echo(f"{model}: was not loaded")
