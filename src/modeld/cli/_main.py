"""The `modeld` command line. Every failure a user can cause ends in one line, never a traceback."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import click

import modeldconn
from modeld._errors import ExitCode, StartupError
from modeld._logging import configure_logging
from modeld.cli._lease_view import lease_as_json, lease_as_text
from modeld.daemon._config import BACKENDS, DEFAULT_LEASE_TTL_S, ServeSettings
from modeldconn._dataroot import ENV_DATA_ROOT, resolve_data_root
from modeldconn._probe import probe

__all__ = ["main"]

_data_root_option = click.option(
    "--data-root",
    # readable=False: an unreadable root is the daemon's to report (exit 3, or wait for it
    # under systemd), and `lease show` reports it as a corrupt lease, not a usage error
    type=click.Path(path_type=Path, readable=False),
    default=None,
    help=f"Data root (default: ${ENV_DATA_ROOT}, else $XDG_STATE_HOME/modeld).",
)


def _fail(message: str, code: int) -> None:
    click.echo(f"modeld: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="modeld", message="modeld %(version)s")
def cli() -> None:
    """modeld: one local-inference daemon per machine, leading by lease."""


@cli.command()
@click.option("--backend", default="llama", show_default=True, help="llama or openvino.")
@_data_root_option
@click.option("--listen", default=None, help="unix:PATH or HOST:PORT (loopback; port 0 = any).")
@click.option(
    "--socket-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory for the Unix sockets (default: the data root); systemd units pass their "
    "RuntimeDirectory. The lease still lives in the data root and names the socket.",
)
@click.option(
    "--lease-ttl",
    type=float,
    default=DEFAULT_LEASE_TTL_S,
    show_default=True,
    help="Lease TTL, s; renewed every TTL/3, through model loads and drains too.",
)
@click.option(
    "--standby/--no-standby",
    default=True,
    show_default=True,
    help="Wait for the lease when another instance holds it.",
)
@click.option(
    "--drain-grace",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds in-flight calls may finish after SIGTERM (the lease is renewed meanwhile).",
)
@click.option(
    "--model",
    default=None,
    help="Load this model (a name under <data root>/models, gemma3-270m, or a path) before "
    "serving; without it models load on their first OpenSession.",
)
@click.option(
    "--allow-model-root",
    "allow_model_roots",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A directory (besides <data root>/models) that clients' model paths may point into; "
    "repeatable. Paths are checked with every symlink resolved.",
)
@click.option(
    "--threads", type=click.IntRange(min=0), default=0, help="Engine threads (0: all cores)."
)
@click.option(
    "--precision",
    type=click.Choice(["default", "f32", "bf16", "f16"]),
    default="default",
    show_default=True,
    help="openvino: inference precision (default: the device's, bf16 on CPUs that have it; "
    "f32 gives llama.cpp's greedy tokens on the same GGUF).",
)
@click.option(
    "--decode-batch-rows",
    type=click.IntRange(min=0, max=16),
    default=0,
    show_default=True,
    help="Sessions' decode steps computed per engine call. 0: as many as give every session "
    "exactly its solo logits (measured at model load); more trades that for throughput "
    "(Status says decode_batch_exact: false).",
)
@click.option(
    "--exact-prefix/--no-exact-prefix",
    default=False,
    show_default=True,
    help="Sessions' default exact_prefix (a session may ask otherwise): a warm turn gives "
    "exactly a cold run's tokens, at the cost of recomputing the last partial prefill chunk and "
    "the generated tokens each turn (see the README, Warm equals cold).",
)
@click.option(
    "--memory-limit",
    default="0",
    help="Cap on weights + KV, e.g. 800MB or 4GiB (0: free memory less 256 MiB).",
)
@click.option(
    "--max-live-sessions",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Sessions holding an engine context at once; more are parked and restored on use.",
)
@click.option("--park-ram", default="1GiB", show_default=True, help="Parked KV kept in RAM.")
@click.option("--park-disk", default="8GiB", show_default=True, help="Parked KV allowed on disk.")
@click.option(
    "--snapshot-budget", default="4GiB", show_default=True, help="Bytes of snapshots kept."
)
@click.option(
    "--disk-reserve",
    default="64MiB",
    show_default=True,
    help="Free space parking and snapshots leave on the data root's file system, so the lease "
    "can always be written.",
)
@click.option(
    "--idle-park",
    type=float,
    default=600.0,
    show_default=True,
    help="Park a session idle this many seconds (0: only when room is needed).",
)
@click.option(
    "--idle-close",
    type=float,
    default=86400.0,
    show_default=True,
    help="Close a session idle this many seconds (0: never).",
)
@click.option(
    "--unload-after",
    type=float,
    default=3600.0,
    show_default=True,
    help="Free a model's weights when no live session used it this many seconds (0: never).",
)
@click.option(
    "--auth-token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="0600 file with the bearer token every call but health must carry; required for a "
    "non-loopback --listen.",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path),
    default=None,
    help="PEM certificate chain: the TCP --listen speaks TLS (clients verify it against "
    "<data root>/tls-ca.pem, $MODELD_TLS_CA or the system's CAs).",
)
@click.option(
    "--tls-key", type=click.Path(path_type=Path), default=None, help="PEM private key (0600)."
)
@click.option(
    "--metrics-listen",
    default=None,
    help="Expose Prometheus metrics on loopback HOST:PORT (port 0: any; default: off).",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one JSON object a line, with request and session ids.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    backend: str,
    data_root: Path | None,
    listen: str | None,
    socket_dir: Path | None,
    lease_ttl: float,
    standby: bool,
    drain_grace: float,
    model: str | None,
    allow_model_roots: tuple[Path, ...],
    threads: int,
    precision: str,
    decode_batch_rows: int,
    exact_prefix: bool,
    memory_limit: str,
    max_live_sessions: int,
    park_ram: str,
    park_disk: str,
    snapshot_budget: str,
    disk_reserve: str,
    idle_park: float,
    idle_close: float,
    unload_after: float,
    auth_token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    metrics_listen: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """Serve the data root's models, leading by lease (or standing by)."""
    if backend not in BACKENDS:
        _fail(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}", ExitCode.USAGE)
    module, extra = BACKENDS[backend]
    if importlib.util.find_spec(module) is None:
        _fail(f"backend {backend} needs {module}: pip install 'modeld[{extra}]'", ExitCode.USAGE)
    park_ram_bytes, park_disk_bytes = parse_bytes(park_ram), parse_bytes(park_disk)
    snapshot_bytes = parse_bytes(snapshot_budget)
    reserve_bytes = parse_bytes(disk_reserve)
    if None in (park_ram_bytes, park_disk_bytes, snapshot_bytes, reserve_bytes):
        _fail(
            "--park-ram / --park-disk / --snapshot-budget / --disk-reserve: expected bytes like "
            "800MB or 4GiB",
            ExitCode.USAGE,
        )
    limit = parse_bytes(memory_limit)
    if limit is None:
        _fail(f"--memory-limit {memory_limit!r}: expected bytes like 800MB or 4GiB", ExitCode.USAGE)
    configure_logging(log_level, json_lines=log_format == "json")
    settings = ServeSettings(
        data_root=resolve_data_root(data_root),
        backend=backend,
        listen=listen,
        socket_dir=socket_dir,
        lease_ttl_s=lease_ttl,
        standby=standby,
        drain_grace_s=drain_grace,
        model=model,
        allowed_model_roots=allow_model_roots,
        threads=threads,
        precision="" if precision == "default" else precision,
        decode_batch_rows=decode_batch_rows,
        exact_prefix=exact_prefix,
        memory_limit_bytes=limit or 0,
        max_live_sessions=max_live_sessions,
        park_ram_bytes=park_ram_bytes or 0,
        park_disk_bytes=park_disk_bytes or 0,
        snapshot_budget_bytes=snapshot_bytes or 0,
        disk_reserve_bytes=reserve_bytes or 0,
        idle_park_s=idle_park,
        idle_close_s=idle_close,
        unload_after_s=unload_after,
        metrics_listen=metrics_listen,
        auth_token_file=auth_token_file,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
    )
    try:
        settings.validate()  # every inconsistent flag in one line, before anything is bound
    except StartupError as exc:
        _fail(str(exc), exc.exit_code)
    from modeld.daemon._serve import (
        serve as run_daemon,  # grpc's server side loads only when serving
    )

    try:
        code = asyncio.run(run_daemon(settings))
    except StartupError as exc:
        _fail(str(exc), exc.exit_code)
    sys.exit(code)


@cli.group()
def lease() -> None:
    """Inspect the data root's lease (offline)."""


@lease.command("show")
@_data_root_option
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


def _client_or_fail(data_root: Path | None) -> modeldconn.Client:
    client = modeldconn.Client(data_root=resolve_data_root(data_root))
    try:
        client._leader()
    except modeldconn.ProbeError as exc:
        _fail(f"no daemon to talk to: {exc}", ExitCode.STARTUP)
    return client


@cli.command()
@click.argument("model")
@_data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def describe(model: str, data_root: Path | None, as_json: bool) -> None:
    """Facts read from MODEL's header (a name or a path), and what fits in memory."""
    from modeld.models._describe import describe_locally

    try:
        click.echo(describe_locally(resolve_data_root(data_root), model, as_json=as_json))
    except modeldconn.RemoteError as exc:
        _fail(str(exc), ExitCode.STARTUP)


@cli.command()
@click.argument("model")
@click.argument("prompt")
@_data_root_option
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
    client = _client_or_fail(data_root)
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
        _fail(str(exc), ExitCode.STARTUP)


@cli.command()
@_data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the Status reply as JSON.")
def status(data_root: Path | None, as_json: bool) -> None:
    """Ask the running daemon how it is: identity, state, models, sessions."""
    client = _client_or_fail(data_root)
    try:
        reply = client.status()
    except modeldconn.ModeldError as exc:
        _fail(str(exc), ExitCode.STARTUP)
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
@_data_root_option
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
    client = _client_or_fail(data_root)
    try:
        result = client.embed(
            model, list(texts), normalize=not no_normalize, truncate=truncate, pooling=pooling or ""
        )
    except modeldconn.ModeldError as exc:
        _fail(str(exc), ExitCode.STARTUP)
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


def main() -> None:
    cli(prog_name="modeld")
