"""The session layer's figures: counted by their owners, read as one immutable snapshot.

Engine-side counters are written on the engine thread only; loop-side ones on the loop only.
After every engine job the engine thread publishes a :class:`Stats` snapshot (see
``EngineScheduler.after_job``), and Status and the Prometheus collector read the last one: a
single reference read, safe from any thread, never a walk over live structures.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineCounters", "LoopCounters", "Stats"]


@dataclass
class EngineCounters:
    """Written on the engine thread only."""

    prefix_hits: int = 0
    prefix_misses: int = 0
    prefix_shares: int = 0
    prefix_shared_tokens: int = 0
    #: a donor that looked worth it but could not be copied here: computed instead
    prefix_share_failures: int = 0
    decode_calls: int = 0
    decode_rows: int = 0


@dataclass
class LoopCounters:
    """Written on the loop only."""

    sessions_reaped: int = 0
    clients_attached: int = 0


@dataclass(frozen=True)
class Stats:
    """Everything Status and /metrics report about sessions, as of one instant."""

    sessions_open: int = 0
    sessions_live: int = 0
    sessions_parked: int = 0
    parked_ram_bytes: int = 0
    parked_disk_bytes: int = 0
    parks: int = 0
    restores: int = 0
    max_live_sessions: int = 0
    prefix_hits: int = 0
    prefix_misses: int = 0
    prefix_shares: int = 0
    prefix_shared_tokens: int = 0
    prefix_share_failures: int = 0
    decode_calls: int = 0
    decode_rows: int = 0
    model_loads: int = 0
    sessions_reaped: int = 0
    clients_attached: int = 0
