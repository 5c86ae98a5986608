"""The one settings object for `modeld serve`, built by the CLI and passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BACKENDS", "ServeSettings"]

#: backend name → (import name that proves it is installed, pip extra that installs it)
BACKENDS: dict[str, tuple[str, str]] = {
    "llama": ("llama_cpp", "llama"),
    "openvino": ("openvino_genai", "openvino"),
}


@dataclass(frozen=True)
class ServeSettings:
    data_root: Path
    backend: str
    #: None → the per-instance Unix socket in the data root; else unix:PATH or HOST:PORT
    listen: str | None = None
    #: where the per-instance socket and modeld.sock live (None: the data root); e.g. /run/modeld
    socket_dir: Path | None = None
    lease_ttl_s: float = 15.0
    #: wait for the lease when another instance holds it (False: exit non-zero at once)
    standby: bool = True
    #: how long in-flight RPCs may run after SIGTERM before they are cancelled
    drain_grace_s: float = 5.0
    #: how often a standby re-reads the lease
    poll_interval_s: float = 0.2
    #: a model (name or path) to load before serving; None loads on the first OpenSession
    model: str | None = None
    #: engine threads per session (default: all cores)
    threads: int = 0
    #: openvino inference precision hint; empty: the device's default
    precision: str = ""
    #: sessions' decode steps per engine call; 0: as many as give bit-identical results
    decode_batch_rows: int = 0
    #: cap on what weights and KV may use, bytes (0: free memory less a reserve)
    memory_limit_bytes: int = 0
    #: sessions holding an engine context at once; more are parked (KV saved, context freed)
    max_live_sessions: int = 8
    #: bytes of parked KV kept in RAM; beyond it parked KV goes to <data root>/parked/
    park_ram_bytes: int = 1 << 30
    #: bytes of parked KV allowed on disk
    park_disk_bytes: int = 8 << 30
    #: bytes of snapshots kept under <data root>/snapshots/ (least recently used go first)
    snapshot_budget_bytes: int = 4 << 30
    #: park a session idle this long, seconds (0: only when room is needed)
    idle_park_s: float = 600.0
    #: close a session idle this long, seconds (0: never)
    idle_close_s: float = 86400.0
    #: free a model's weights when no live session used it this long, seconds (0: never);
    #: its parked sessions stay restorable
    unload_after_s: float = 3600.0
    #: loopback HOST:PORT for the Prometheus endpoint; None: not exposed
    metrics_listen: str | None = None
    #: directories outside <data root>/models a ModelRef path may point into (links resolved)
    allowed_model_roots: tuple[Path, ...] = ()
    #: a 0600 file holding the bearer token every call but health must carry
    auth_token_file: Path | None = None
    #: PEM certificate chain and private key (0600): the TCP listener speaks TLS
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
