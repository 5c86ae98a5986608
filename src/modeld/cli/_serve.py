"""`modeld serve`: its options, checked together, into one ServeSettings."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import click

from modeld._errors import ExitCode, StartupError
from modeld._logging import configure_logging
from modeld.cli._commands import parse_bytes
from modeld.cli._group import cli, data_root_option, fail
from modeld.daemon._config import BACKENDS, DEFAULT_LEASE_TTL_S, ServeSettings
from modeldconn._dataroot import resolve_data_root

__all__ = ["serve"]


@cli.command()
@click.option("--backend", default="llama", show_default=True, help="llama or openvino.")
@data_root_option
@click.option("--listen", default=None, help="unix:PATH or HOST:PORT (loopback; port 0 = any).")
@click.option(
    "--http-listen",
    default=None,
    help="Serve the OpenAI-compatible HTTP API on HOST:PORT (the leader only; port 0: any; "
    "non-loopback needs --auth-token-file; TLS with --tls-cert/--tls-key). Default: off.",
)
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
    "--device",
    type=click.Choice(["CPU", "GPU", "NPU", "AUTO"], case_sensitive=False),
    default="CPU",
    show_default=True,
    help="openvino: the device models compile on (a catalog alias's device overrides it); "
    "one OpenVINO does not see falls back to CPU, as `modeld plan` says. llama offloads "
    "layers to a GPU when its build can (see the README).",
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
    "--max-loaded-models",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Models whose weights stay loaded at once; loading one more unloads the least recently "
    "used idle one, parking its sessions (0: no limit but --memory-limit).",
)
@click.option(
    "--load-timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds a model load may take when neither the alias nor LoadModel names one (0: none).",
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
    http_listen: str | None,
    socket_dir: Path | None,
    lease_ttl: float,
    standby: bool,
    drain_grace: float,
    model: str | None,
    allow_model_roots: tuple[Path, ...],
    threads: int,
    precision: str,
    device: str,
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
    max_loaded_models: int,
    load_timeout: float,
    auth_token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    metrics_listen: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """Serve the data root's models, leading by lease (or standing by)."""
    if backend not in BACKENDS:
        fail(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}", ExitCode.USAGE)
    module, extra = BACKENDS[backend]
    if importlib.util.find_spec(module) is None:
        fail(f"backend {backend} needs {module}: pip install 'modeld[{extra}]'", ExitCode.USAGE)
    park_ram_bytes, park_disk_bytes = parse_bytes(park_ram), parse_bytes(park_disk)
    snapshot_bytes = parse_bytes(snapshot_budget)
    reserve_bytes = parse_bytes(disk_reserve)
    if None in (park_ram_bytes, park_disk_bytes, snapshot_bytes, reserve_bytes):
        fail(
            "--park-ram / --park-disk / --snapshot-budget / --disk-reserve: expected bytes like "
            "800MB or 4GiB",
            ExitCode.USAGE,
        )
    limit = parse_bytes(memory_limit)
    if limit is None:
        fail(f"--memory-limit {memory_limit!r}: expected bytes like 800MB or 4GiB", ExitCode.USAGE)
    configure_logging(log_level, json_lines=log_format == "json")
    settings = ServeSettings(
        data_root=resolve_data_root(data_root),
        backend=backend,
        listen=listen,
        http_listen=http_listen,
        socket_dir=socket_dir,
        lease_ttl_s=lease_ttl,
        standby=standby,
        drain_grace_s=drain_grace,
        model=model,
        allowed_model_roots=allow_model_roots,
        threads=threads,
        precision="" if precision == "default" else precision,
        device=device.upper(),
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
        max_loaded_models=max_loaded_models,
        load_timeout_s=load_timeout,
        metrics_listen=metrics_listen,
        auth_token_file=auth_token_file,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
    )
    try:
        settings.validate()  # every inconsistent flag in one line, before anything is bound
    except StartupError as exc:
        fail(str(exc), exc.exit_code)
    from modeld.daemon._serve import (
        serve as run_daemon,  # grpc's server side loads only when serving
    )

    try:
        code = asyncio.run(run_daemon(settings))
    except StartupError as exc:
        fail(str(exc), exc.exit_code)
    sys.exit(code)
