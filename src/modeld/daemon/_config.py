"""The one settings object for `modeld serve`, built by the CLI and passed down explicitly."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from modeld._errors import ExitCode, StartupError
from modeld.lease._gate import leadership_window_s
from modeldconn._probe import DEFAULT_LEASE_TTL_S

__all__ = ["BACKENDS", "DEFAULT_LEASE_TTL_S", "LEASE_TTL_RANGE_S", "ServeSettings"]

#: the lease TTLs `modeld serve` accepts, seconds: below half a second a renewal every TTL/3
#: competes with a loaded machine's scheduling jitter; above an hour a dead host blocks takeover
#: for longer than anyone would wait
LEASE_TTL_RANGE_S = (0.5, 3600.0)

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
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    #: wait for the lease when another instance holds it (False: exit non-zero at once)
    standby: bool = True
    #: how long in-flight RPCs may run after SIGTERM before they are cancelled (the lease is
    #: renewed meanwhile, so it may exceed the TTL)
    drain_grace_s: float = 5.0
    #: how often a standby re-reads the lease
    poll_interval_s: float = 0.2
    #: a model (name or path) to load before serving; None loads on the first OpenSession
    model: str | None = None
    #: engine threads per session (default: all cores)
    threads: int = 0
    #: openvino inference precision hint; empty: the device's default
    precision: str = ""
    #: openvino's device: CPU | GPU | NPU | AUTO (absent ones fall back to CPU, see the plan)
    device: str = "CPU"
    #: sessions' decode steps per engine call; 0: as many as give bit-identical results
    decode_batch_rows: int = 0
    #: a session's exact_prefix when it does not ask (a warm turn equals a cold run)
    exact_prefix: bool = False
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
    #: bytes of the data root's file system that parking and snapshots leave free, so the
    #: lease can always be renewed and taken over
    disk_reserve_bytes: int = 64 << 20
    #: park a session idle this long, seconds (0: only when room is needed)
    idle_park_s: float = 600.0
    #: close a session idle this long, seconds (0: never)
    idle_close_s: float = 86400.0
    #: free a model's weights when no live session used it this long, seconds (0: never);
    #: its parked sessions stay restorable
    unload_after_s: float = 3600.0
    #: models whose weights stay loaded at once (0: no limit but the memory limit); one more
    #: unloads the least recently used idle one, parking its sessions
    max_loaded_models: int = 0
    #: seconds a model load may take when neither the alias nor LoadModel names one (0: none)
    load_timeout_s: float = 600.0
    #: loopback HOST:PORT for the Prometheus endpoint; None: not exposed
    metrics_listen: str | None = None
    #: directories outside <data root>/models a ModelRef path may point into (links resolved)
    allowed_model_roots: tuple[Path, ...] = ()
    #: HOST:PORT of the OpenAI-compatible HTTP API (leader only); None: off
    http_listen: str | None = None
    #: a 0600 file holding the bearer token every call but health must carry
    auth_token_file: Path | None = None
    #: PEM certificate chain and private key (0600): the TCP listener speaks TLS
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def validate(self) -> None:
        """Check the settings that depend on each other (and the bounds of each), all at once,
        before anything starts.

        :raises StartupError: with ``ExitCode.USAGE`` and every problem found, one per clause.
        """
        problems: list[str] = []
        low, high = LEASE_TTL_RANGE_S
        ttl = self.lease_ttl_s
        if not (math.isfinite(ttl) and low <= ttl <= high):
            problems.append(f"--lease-ttl {ttl:g}: choose between {low:g} and {high:g} s")
        elif not 0 < self.poll_interval_s < leadership_window_s(ttl):
            # a standby polling slower than a leader's validity would notice a dead holder only
            # after several lease lifetimes
            problems.append(
                f"poll interval {self.poll_interval_s:g} s: must be above 0 and below the "
                f"leadership window ({leadership_window_s(ttl):g} s of --lease-ttl {ttl:g})"
            )
        # Drain renews the lease (daemon._serve), so the grace may exceed the TTL; it only has to
        # be a real duration.
        if not (math.isfinite(self.drain_grace_s) and self.drain_grace_s >= 0):
            problems.append(f"--drain-grace {self.drain_grace_s:g}: must be 0 or more seconds")
        for flag, seconds in (
            ("--idle-park", self.idle_park_s),
            ("--idle-close", self.idle_close_s),
            ("--unload-after", self.unload_after_s),
            ("--load-timeout", self.load_timeout_s),
        ):
            if not (math.isfinite(seconds) and seconds >= 0):
                problems.append(f"{flag} {seconds:g}: must be 0 (off) or more seconds")
        if self.max_loaded_models < 0:
            problems.append(f"--max-loaded-models {self.max_loaded_models}: must be 0 or more")
        if self.max_live_sessions < 1:
            problems.append(f"--max-live-sessions {self.max_live_sessions}: must be 1 or more")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            problems.append("--tls-cert and --tls-key go together: give both or neither")
        if problems:
            raise StartupError("; ".join(problems), exit_code=ExitCode.USAGE)
