"""The client-side commands: `lease show`, `describe`, `generate`, `status`, `embed`."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import click

import modeldconn
from modeld._errors import ExitCode
from modeld.cli._group import cli, data_root_option, fail
from modeld.cli._lease_view import lease_as_json, lease_as_text
from modeldconn._dataroot import resolve_data_root
from modeldconn._probe import probe

__all__ = ["parse_bytes"]


@cli.group()
def lease() -> None:
    """Inspect the data root's lease (offline)."""


@lease.command("show")
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="The lease's fields plus probe_state.")
def lease_show(data_root: Path | None, as_json: bool) -> None:
    """Print who holds the lease and what it proves, without dialling the daemon."""
    root = resolve_data_root(data_root)
    result = probe(data_root=root)
    click.echo(lease_as_json(result) if as_json else lease_as_text(result, str(root)))


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_bytes(text: str) -> int | None:
    """``800MB`` / ``4GiB`` / ``1024`` → bytes; None when malformed."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", text.lower())
    if match is None:
        return None
    return int(float(match[1]) * _UNITS[match[2] or ""])


def _client_orfail(data_root: Path | None) -> modeldconn.Client:
    client = modeldconn.Client(data_root=resolve_data_root(data_root))
    try:
        client._leader()
    except modeldconn.ProbeError as exc:
        fail(f"no daemon to talk to: {exc}", ExitCode.STARTUP)
    return client


@cli.command()
@click.argument("model")
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def describe(model: str, data_root: Path | None, as_json: bool) -> None:
    """Facts read from MODEL's header (a name or a path), and what fits in memory."""
    from modeld.models._describe import describe_locally

    try:
        click.echo(describe_locally(resolve_data_root(data_root), model, as_json=as_json))
    except modeldconn.RemoteError as exc:
        fail(str(exc), ExitCode.STARTUP)


@cli.command()
@click.argument("model")
@click.argument("prompt")
@data_root_option
@click.option("--max-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy.")
@click.option("--seed", type=int, default=None)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--n-ctx", type=click.IntRange(min=0), default=0, help="Context (0: default).")
def generate(
    model: str,
    prompt: str,
    data_root: Path | None,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    stop: tuple[str, ...],
    n_ctx: int,
) -> None:
    """Stream a completion of PROMPT from the running daemon."""
    client = _client_orfail(data_root)
    try:
        with client.open_session(model, n_ctx=n_ctx) as session:
            session.ensure_prefix(prompt)
            final = None
            for chunk in session.decode(
                max_tokens=max_tokens, temperature=temperature, seed=seed, stop=stop
            ):
                click.echo(chunk.text, nl=False)
                final = chunk.final or final
            click.echo()
            if final is not None:
                click.echo(
                    f"[{final.completion_tokens} tokens, {final.stop_reason}, "
                    f"ttft {final.ttft_ms:.0f} ms, {final.tokens_per_s:.1f} tok/s]",
                    err=True,
                )
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)


@cli.command()
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the Status reply as JSON.")
def status(data_root: Path | None, as_json: bool) -> None:
    """Ask the running daemon how it is: identity, state, models, sessions."""
    client = _client_orfail(data_root)
    try:
        reply = client.status()
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)
    if as_json:
        click.echo(json.dumps(_camel_case(dataclasses.asdict(reply)), indent=2))
        return
    click.echo(f"instance   {reply.instance_id} (pid {reply.pid} on {reply.host})")
    click.echo(f"state      {reply.state}, backend {reply.backend}, up {reply.uptime_s:.0f} s")
    click.echo(f"endpoint   {reply.endpoint}")
    click.echo(f"version    modeld {reply.version}, protocol {reply.protocol}")
    click.echo(
        f"sessions   {reply.sessions_open} open: {reply.sessions_live} live "
        f"(at most {reply.max_live_sessions}), {reply.sessions_parked} parked "
        f"({reply.parked_ram_bytes / 2**20:.1f} MiB RAM, {reply.parked_disk_bytes / 2**20:.1f} MiB "
        f"disk; {reply.parks} parks, {reply.restores} restores)"
    )
    click.echo(
        f"sharing    {reply.prefix_shares} sessions started from another's KV "
        f"({reply.prefix_shared_tokens} tokens copied, not computed)"
    )
    rows = reply.decode_rows / reply.decode_calls if reply.decode_calls else 0.0
    click.echo(
        f"decode     {reply.decode_rows} tokens in {reply.decode_calls} engine calls "
        f"({rows:.2f} sessions a call)"
    )
    for loaded in reply.models:
        weights = "" if loaded.weights_loaded else ", weights unloaded while idle"
        click.echo(
            f"model      {loaded.name} ({loaded.digest[:12]}), {loaded.sessions} sessions{weights}"
        )
        if loaded.weights_loaded:
            exact = "exact" if loaded.decode_batch_exact else "NOT bit-exact: --decode-batch-rows"
            click.echo(f"           decode batches of up to {loaded.decode_batch_rows} ({exact})")
    for embedding in reply.embedding_models:
        weights = "weights in" if embedding.weights_loaded else "weights freed while idle"
        shared = ", shared with its sessions" if embedding.shares_weights else ""
        click.echo(
            f"embedding  {embedding.name} ({embedding.digest[:12]}), "
            f"{embedding.contexts} contexts, {weights}{shared}"
        )


@cli.command()
@click.argument("model")
@click.argument("texts", nargs=-1, required=True)
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--no-normalize", is_flag=True, help="Keep the raw pooled vectors.")
@click.option("--truncate", is_flag=True, help="Cut inputs longer than the model takes.")
@click.option("--pooling", type=click.Choice(["mean", "cls", "last"]), default=None)
def embed(
    model: str,
    texts: tuple[str, ...],
    data_root: Path | None,
    as_json: bool,
    no_normalize: bool,
    truncate: bool,
    pooling: str | None,
) -> None:
    """Embed each TEXT with MODEL on the running daemon.

    With --json, one object: {"embeddings": [[...], ...], "dims": N, "pooling": ...,
    "usage": {"input_tokens": [...], "total_tokens": N, "truncated_tokens": [...]}}. Without,
    one line per text: its token count and the first values of its vector.
    """
    client = _client_orfail(data_root)
    try:
        result = client.embed(
            model, list(texts), normalize=not no_normalize, truncate=truncate, pooling=pooling or ""
        )
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)
    vectors = [[float(x) for x in row] for row in result.vectors]
    if as_json:
        usage = result.usage
        document = {
            "embeddings": vectors,
            "dims": result.dims,
            "pooling": result.pooling,
            "normalized": result.normalized,
            "usage": {
                "input_tokens": list(usage.input_tokens),
                "total_tokens": usage.total_tokens,
                "truncated_tokens": list(usage.truncated_tokens),
            },
        }
        click.echo(json.dumps(document))
        return
    for text, row, tokens in zip(texts, vectors, result.usage.input_tokens, strict=True):
        head = ", ".join(f"{x:+.4f}" for x in row[:4])
        click.echo(f"[{head}, ...] {tokens} tokens  {text[:60]!r}")
    click.echo(
        f"[{result.dims} dims, {result.pooling} pooling, {result.engine_calls} engine calls]",
        err=True,
    )


def _camel_case(value: object) -> object:
    """Keys as the Status message's JSON names (``instanceId``), as scripts have read them."""
    if isinstance(value, dict):
        return {
            re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key): _camel_case(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_camel_case(item) for item in value]
    return value
