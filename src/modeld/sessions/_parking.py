"""Parking: more sessions than live engine contexts, transparently.

Only ``max_live`` sessions hold an engine context (their KV in the engine's memory) at once. When
another one needs a context, the least recently used idle session is *parked*: its KV is saved
with the engine's per-sequence state functions into a bounded host-RAM tier, or, when that is
full, into files under ``<data root>/parked/``, and its context is freed. A parked session is
restored (a new context, the saved state loaded back) the next time it is used; its client sees
the same tape and the same numbers, only a few milliseconds later.

Everything here runs on the engine worker thread.

Failure model. Disk parking is refused, never half-done, when it would exceed ``--park-disk``,
eat into the file system's free-space reserve (``--disk-reserve``: the lease must stay writable),
or when the write itself fails (``ENOSPC`` from a disk someone else filled, an unwritable
directory). Then the state stays in RAM if the RAM tier has room; otherwise the session that
needed room is refused with :class:`ParkingFull` (``overloaded``, retryable), whose message and
``why`` metadata say which limit stopped it. Nothing else is lost: the victim stays live.

A parked file is useless without the session table of the process that wrote it, and only the
leader parks, so when a daemon wins the lease it removes everything under ``parked/``
(:meth:`ParkingLot.sweep`): a crashed (``kill -9``) leader's parked KV does not leak. What it
cannot remove is counted against ``--park-disk``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modeld.backends._base import EngineSession, EngineState
from modeld.sessions._state_file import (
    StateFileError,
    read_state_file,
    room_problem,
    state_file_size,
    write_state_file,
)
from modeldconn._errors import Overloaded, SessionFatal

__all__ = ["NoRoom", "Parkable", "ParkedState", "ParkingFull", "ParkingLot"]

log = logging.getLogger("modeld.parking")


class NoRoom(Overloaded):
    """Every live session is busy: nothing can be parked to make room right now."""


class ParkingFull(Overloaded):
    """No tier can take a session's state: RAM is full and the disk may not be used (budget,
    reserve, or a failed write); ``metadata['why']`` says which."""


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

    def __init__(
        self,
        *,
        max_live: int,
        ram_budget: int,
        disk_dir: Path,
        disk_budget: int,
        disk_reserve: int = 0,
    ):
        self.max_live = max_live
        self.ram_budget = ram_budget
        self.disk_dir = disk_dir
        self.disk_budget = disk_budget
        #: bytes of the file system that parking leaves free (the lease must stay writable)
        self.disk_reserve = disk_reserve
        self.ram_bytes = 0
        self.disk_bytes = 0
        self.parks = 0
        self.restores = 0

    def sweep(self) -> tuple[int, int]:
        """Remove what earlier (dead) instances parked in ``disk_dir``; call once on winning
        the lease, before this instance parks anything.

        Only a leader parks, and a leader that lost the lease has stopped serving, so nothing
        in the directory at that moment belongs to a session anyone can reach.

        :returns: (files, bytes) removed. Whatever cannot be removed is counted in
            ``disk_bytes``, against the disk budget.
        """
        assert self.disk_bytes == 0, "sweep before parking"
        removed_files = removed_bytes = 0
        try:
            entries = list(self.disk_dir.iterdir())
        except FileNotFoundError:
            return 0, 0
        except OSError as exc:
            log.warning("cannot list %s to clean it: %s", self.disk_dir, exc.strerror or exc)
            return 0, 0
        for entry in entries:
            for path, size in _files_under(entry):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    self.disk_bytes += size  # still there: it takes room all the same
                    continue
                removed_files += 1
                removed_bytes += size
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
        return removed_files, removed_bytes

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

    def park(self, session: Parkable, tier: str = "") -> None:
        """Save the session's state to RAM, else disk, and free its context. ``tier`` "ram" or
        "disk" uses that tier only (EvictSession).

        :raises ParkingFull: no allowed tier can take it; the session stays live.
        """
        engine = session.engine
        assert engine is not None
        self._store(session, engine.save_state(), tier)
        engine.close()
        session.engine = None
        self.parks += 1

    def move(self, session: Parkable, tier: str) -> None:
        """Move a parked session's state to ``tier`` ("ram" | "disk"); nothing when it is
        there already.

        :raises ParkingFull: ``tier`` cannot take it; it stays where it was.
        :raises SessionFatal: its parked state is lost.
        """
        parked = session.parked
        assert parked is not None
        if (parked.state is not None) == (tier == "ram"):
            return
        state = self.saved_state(session)
        session.parked = None
        try:
            self._store(session, state, tier)
        except BaseException:
            session.parked = parked
            raise
        moved, session.parked = session.parked, parked
        self.forget(session)  # the old tier's bytes and file
        session.parked = moved

    def _store(self, session: Parkable, state: EngineState, tier: str) -> None:
        """Set ``session.parked`` to ``state`` kept in RAM, else on disk (``tier``: only there).

        :raises ParkingFull: no allowed tier can take it (``session.parked`` stays None)."""
        ram_fits = self.ram_bytes + state.size <= self.ram_budget
        if tier != "disk" and (ram_fits or tier == "ram"):
            if not ram_fits:
                raise ParkingFull(
                    f"the RAM tier cannot take {state.size} bytes: {self.ram_bytes} of "
                    f"{self.ram_budget} bytes are used (--park-ram)",
                    retry_after_s=5,
                    why="ram_budget",
                )
            session.parked = ParkedState(state.kv_len, state.size, state, None)
            self.ram_bytes += state.size
        else:
            meta = {"session": session.id}
            need = state_file_size(state, meta)
            why, problem = "", ""
            if self.disk_bytes + need > self.disk_budget:
                why = "disk_budget"
                problem = (
                    f"parked files take {self.disk_bytes} of {self.disk_budget} bytes "
                    f"(--park-disk), {need} more needed"
                )
            elif problem := room_problem(self.disk_dir, need, self.disk_reserve):
                why = "disk_reserve"
            else:
                path = self.disk_dir / f"{session.id}.kv"
                try:
                    self.disk_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    size = write_state_file(path, state, meta)
                except OSError as exc:
                    why, problem = "disk_error", f"writing {path} failed: {exc.strerror or exc}"
                else:
                    session.parked = ParkedState(state.kv_len, size, None, path)
                    self.disk_bytes += size
            if session.parked is None:
                ram = (
                    ""
                    if tier == "disk"
                    else f"the RAM tier is full ({self.ram_bytes} of {self.ram_budget} bytes, "
                    "--park-ram) and "
                )
                raise ParkingFull(
                    f"cannot park a session: {ram}{problem}", retry_after_s=5, why=why
                )

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
            # an unwritable directory must not stop a close; the next leader's sweep retries
            with contextlib.suppress(OSError):
                os.unlink(parked.path)


def _files_under(entry: Path) -> list[tuple[Path, int]]:
    """Every file at or under ``entry`` with its size (links are not followed)."""
    found: list[tuple[Path, int]] = []
    with contextlib.suppress(OSError):
        if entry.is_dir() and not entry.is_symlink():
            for dirpath, _, names in os.walk(entry):
                for name in names:
                    path = Path(dirpath) / name
                    with contextlib.suppress(OSError):
                        found.append((path, path.lstat().st_size))
        else:
            found.append((entry, entry.lstat().st_size))
    return found
