"""One session: its token tape, its place in the engine, and its lifecycle as a state machine.

Lifecycle (who moves it in brackets)::

    IDLE --begin [loop]--> BUSY --[engine thread, while its Decode steps]--> DECODING
      ^                     |  ^------------------------------------------------'
      '-----end [loop]------'
    IDLE  --close [loop]--> CLOSED
    BUSY / DECODING --close [loop]--> CLOSING --end [loop]--> CLOSED

The loop starts and ends operations; between ``begin`` and ``end`` the operation's engine work
owns the session, and ``end`` runs only after that work has finished on the engine thread (the
scheduler waits for a cancelled stream to close), so the two never write the state at once.

Where the KV lives is separate from the lifecycle, and owned by the engine thread: ``engine``
(live: an engine context holds it) or ``parked`` (saved by the parking lot), never both. An idle
session may be parked at any time; an operation makes its session live first.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modeld.backends._base import EngineSession

if TYPE_CHECKING:
    from modeld.sessions._models import LoadedModel
    from modeld.sessions._parking import ParkedState

__all__ = ["Session", "SessionState"]


class SessionState(enum.Enum):
    IDLE = "idle"  #: no operation runs
    BUSY = "busy"  #: an operation runs
    #: a Decode is between its steps: its sampled token may be computed in another's batch
    DECODING = "decoding"
    CLOSING = "closing"  #: closed while an operation ran; freed when that operation ends
    CLOSED = "closed"


_ACTIVE = frozenset({SessionState.BUSY, SessionState.DECODING, SessionState.CLOSING})


@dataclass
class Session:
    id: str
    handle: str
    model: LoadedModel
    #: None while parked or closed (see ``_parking``)
    engine: EngineSession | None
    n_ctx: int
    #: the tokens whose KV the session holds, in order; the last one may be sampled but not
    #: computed yet (right after a Decode)
    tape: list[int] = field(default_factory=list)
    prefix_len: int = 0
    #: tokens the last EnsurePrefix kept; reported by the next Decode, then reset
    turn_reused: int = 0
    state: SessionState = SessionState.IDLE
    #: set whenever no operation runs, so a waiting one can start
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    parked: ParkedState | None = None
    last_used: float = field(default_factory=time.monotonic)
    #: the Attach id of the client that opened it; its session closes when that client goes
    owner: str = ""

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def busy(self) -> bool:
        """An operation runs (or is unwinding) on it."""
        return self.state in _ACTIVE

    @property
    def decoding(self) -> bool:
        return self.state is SessionState.DECODING

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV its context reserves (n_ctx x the model's KV bytes per token)."""
        return self.n_ctx * self.model.spec.facts.kv_bytes_per_token

    def begin(self) -> None:
        """Loop: an operation starts (the session was IDLE)."""
        assert self.state is SessionState.IDLE, self.state
        self.state = SessionState.BUSY
        self.idle.clear()

    def set_decoding(self, on: bool) -> None:
        """Engine thread, inside an operation: offer (or stop offering) the sampled token."""
        if self.state in (SessionState.BUSY, SessionState.DECODING):
            self.state = SessionState.DECODING if on else SessionState.BUSY

    def end(self) -> bool:
        """Loop: the operation has ended; True when the session is to be freed now."""
        closing = self.state is SessionState.CLOSING
        self.state = SessionState.CLOSED if closing else SessionState.IDLE
        self.last_used = time.monotonic()
        self.idle.set()
        return closing

    def close(self) -> bool:
        """Loop: True when it can be freed now; False when its running operation frees it."""
        if self.busy:
            self.state = SessionState.CLOSING
            return False
        self.state = SessionState.CLOSED
        return True
