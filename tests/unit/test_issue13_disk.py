"""Issue 13, faults 4 and 7, in-process: a full disk and a crashed instance's parked files.

* Parking and snapshots keep ``--disk-reserve`` free; when disk parking is impossible (budget,
  reserve, a failing write) the session that needed room is refused typed (``overloaded`` with
  ``why``), the victim stays live, nothing is left on disk.
* The idle reaper survives every failure and logs each one (``REAPER_FAILURES`` rounds in CI;
  the full size, ``MODELD_REAPER_FAILURES=100``, runs the same code 100 times).
* Parked files found when a daemon wins the lease are removed and counted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from modeld.backends._base import EngineState
from modeld.daemon import _serve
from modeld.daemon._config import ServeSettings
from modeld.sessions import _parking
from modeld.sessions._parking import ParkedState, ParkingFull, ParkingLot
from modeld.sessions._snapshots import Snapshot, SnapshotStore
from modeldconn._errors import Overloaded, SnapshotFailed

REAPER_FAILURES = int(os.environ.get("MODELD_REAPER_FAILURES", "6"))
KV = b"k" * 4096


class Engine:
    closed = False

    def save_state(self) -> EngineState:
        return EngineState(KV, 7, b"l" * 64)

    def close(self) -> None:
        self.closed = True


@dataclass
class Parked:
    id: str
    engine: Engine | None
    parked: ParkedState | None = None
    last_used: float = 0.0

    @property
    def busy(self) -> bool:
        return False


def _lot(tmp_path: Path, **overrides: int) -> ParkingLot:
    settings = {"ram_budget": 0, "disk_budget": 1 << 30, "disk_reserve": 0, **overrides}
    return ParkingLot(max_live=1, disk_dir=tmp_path / "parked", **settings)


def test_parking_to_disk_counts_the_files_real_size(tmp_path: Path) -> None:
    lot = _lot(tmp_path)
    session = Parked("a" * 32, Engine())
    lot.park(session)  # type: ignore[arg-type]
    assert session.parked is not None and session.parked.path is not None
    assert lot.disk_bytes == session.parked.path.stat().st_size > len(KV)


def test_parking_refuses_typed_when_it_would_eat_the_reserve(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    lot = _lot(tmp_path, disk_reserve=free)  # nothing may be written
    session = Parked("b" * 32, Engine())
    with pytest.raises(ParkingFull) as refused:
        lot.park(session)  # type: ignore[arg-type]
    assert isinstance(refused.value, Overloaded) and refused.value.reason == "overloaded"
    assert refused.value.metadata["why"] == "disk_reserve"
    assert "--disk-reserve" in str(refused.value) and "--park-ram" in str(refused.value)
    assert session.engine is not None and not session.engine.closed and session.parked is None
    assert not (tmp_path / "parked").exists() or not list((tmp_path / "parked").iterdir())


def test_parking_refuses_typed_over_the_disk_budget(tmp_path: Path) -> None:
    lot = _lot(tmp_path, disk_budget=100)
    session = Parked("c" * 32, Engine())
    with pytest.raises(ParkingFull) as refused:
        lot.park(session)  # type: ignore[arg-type]
    assert refused.value.metadata["why"] == "disk_budget" and "--park-disk" in str(refused.value)


def test_a_failing_write_enospc_is_typed_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_parking, "write_state_file", full)
    lot = _lot(tmp_path)
    session = Parked("d" * 32, Engine())
    with pytest.raises(ParkingFull) as refused:
        lot.park(session)  # type: ignore[arg-type]
    assert refused.value.metadata["why"] == "disk_error"
    assert "No space left" in str(refused.value)
    assert session.engine is not None and lot.disk_bytes == 0 and lot.parks == 0


def test_snapshots_keep_the_reserve(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots", 1 << 30, shutil.disk_usage(tmp_path).free)
    snapshot = Snapshot("e" * 32, EngineState(KV, 7, None), "digest", "", {}, [1, 2], 1, 64)
    with pytest.raises(SnapshotFailed, match="reserve"):
        store.save(snapshot)
    assert (
        not list((tmp_path / "snapshots").glob("*")) if (tmp_path / "snapshots").exists() else True
    )


class FailingSessions:
    """reap() fails in every way a round can (typed, OSError, a bug), then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.rounds = 0

    async def reap(self, *, park_after_s: float, close_after_s: float) -> None:
        self.rounds += 1
        if self.rounds <= self.failures:
            kind = self.rounds % 3
            if kind == 0:
                raise ParkingFull("no room", why="disk_reserve")
            if kind == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("a bug in a round")

    async def unload_idle_models(self, after_s: float) -> None:
        return None


def test_the_idle_reaper_survives_and_logs_every_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = FailingSessions(REAPER_FAILURES)
    settings = ServeSettings(data_root=tmp_path, backend="llama", idle_park_s=0.01)
    real_sleep = asyncio.sleep

    async def no_wait(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(_serve.asyncio, "sleep", no_wait)

    async def run() -> None:
        reaper = asyncio.ensure_future(_serve._reap_idle(sessions, settings))  # type: ignore[arg-type]
        while sessions.rounds <= REAPER_FAILURES + 2:
            await real_sleep(0.001)
            assert not reaper.done(), reaper
        reaper.cancel()

    with caplog.at_level(logging.WARNING, logger="modeld"):
        asyncio.run(run())
    failures = [r for r in caplog.records if "idle reaper" in r.getMessage()]
    assert len(failures) == REAPER_FAILURES  # each one said, none silent
    assert sessions.rounds > REAPER_FAILURES  # and it kept running


def test_parked_files_of_dead_instances_are_swept_and_counted(tmp_path: Path) -> None:
    parked = tmp_path / "parked"
    parked.mkdir()
    for i in range(5):
        (parked / f"{i:032x}.kv").write_bytes(b"x" * 100)
    (parked / "odd-dir").mkdir()
    (parked / "odd-dir" / "inner.kv").write_bytes(b"y" * 50)
    lot = _lot(tmp_path)
    assert lot.sweep() == (6, 550)
    assert not list(parked.iterdir()) and lot.disk_bytes == 0
