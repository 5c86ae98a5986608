"""Parking: more sessions than live engine contexts, transparently.

Only ``max_live`` sessions hold an engine context (their KV in the engine's memory) at once. When
another one needs a context, the least recently used idle session is *parked*: its KV is saved
with the engine's per-sequence state functions into a bounded host-RAM tier, or, when that is
full, into files under ``<data root>/parked/``, and its context is freed. A parked session is
restored (a new context, the saved state loaded back) the next time it is used; its client sees
the same tape and the same numbers, only a few milliseconds later.

Everything here runs on the engine worker thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modeld.backends._base import EngineSession, EngineState
from modeld.sessions._state_file import StateFileError, read_state_file, write_state_file
from modeldconn._errors import Overloaded, SessionFatal

__all__ = ["NoRoom", "Parkable", "ParkedState", "ParkingLot"]


class NoRoom(Overloaded):
    """Every live session is busy: nothing can be parked to make room right now."""


@dataclass
class ParkedState:
    kv_len: int
    size: int
    state: EngineState | None  #: RAM tier
    path: Path | None  #: disk tier


class Parkable(Protocol):
    id: str
    engine: EngineSession | None
    parked: ParkedState | None
    last_used: float

    @property
    def busy(self) -> bool: ...


class ParkingLot:
    """:param max_live: sessions that may hold an engine context at once."""

    def __init__(self, *, max_live: int, ram_budget: int, disk_dir: Path, disk_budget: int):
        self.max_live = max_live
        self.ram_budget = ram_budget
        self.disk_dir = disk_dir
        self.disk_budget = disk_budget
        self.ram_bytes = 0
        self.disk_bytes = 0
        self.parks = 0
        self.restores = 0

    def make_room(self, sessions: Iterable[Parkable], keep: Parkable | None) -> None:
        """Park least recently used idle sessions until one more context fits.

        :raises Overloaded: every live session is busy; retry shortly.
        """
        live = [s for s in sessions if s.engine is not None and s is not keep]
        while len(live) >= self.max_live:
            idle = [s for s in live if not s.busy]
            if not idle:
                raise NoRoom(
                    f"all {len(live)} live sessions are busy; retry shortly", retry_after_s=0.5
                )
            victim = min(idle, key=lambda s: s.last_used)
            self.park(victim)
            live.remove(victim)

    def park(self, session: Parkable) -> None:
        engine = session.engine
        assert engine is not None
        state = engine.save_state()
        if self.ram_bytes + state.size <= self.ram_budget:
            session.parked = ParkedState(state.kv_len, state.size, state, None)
            self.ram_bytes += state.size
        elif self.disk_bytes + state.size <= self.disk_budget:
            self.disk_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.disk_dir / f"{session.id}.kv"
            write_state_file(path, state, {"session": session.id})
            session.parked = ParkedState(state.kv_len, state.size, None, path)
            self.disk_bytes += state.size
        else:
            raise Overloaded(
                "no room left to park a session (RAM and disk tiers are full)", retry_after_s=5
            )
        engine.close()
        session.engine = None
        self.parks += 1

    def restore(self, session: Parkable, open_context: Callable[[], EngineSession]) -> None:
        parked = session.parked
        assert parked is not None and session.engine is None
        state = self.saved_state(session)
        engine = open_context()
        try:
            engine.load_state(state)
        except BaseException:
            engine.close()
            raise
        session.engine = engine
        self.forget(session)
        self.restores += 1

    def saved_state(self, session: Parkable) -> EngineState:
        parked = session.parked
        assert parked is not None
        if parked.state is not None:
            return parked.state
        assert parked.path is not None
        try:
            return read_state_file(parked.path)[0]
        except (OSError, StateFileError) as exc:
            raise SessionFatal(f"the parked state of session {session.id} is lost: {exc}") from None

    def forget(self, session: Parkable) -> None:
        parked, session.parked = session.parked, None
        if parked is None:
            return
        if parked.state is not None:
            self.ram_bytes -= parked.size
        if parked.path is not None:
            self.disk_bytes -= parked.size
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parked.path)
