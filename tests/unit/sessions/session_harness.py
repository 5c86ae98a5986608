"""A SessionManager over the fake engine, in-process (used by this folder's conftest)."""

from __future__ import annotations

from pathlib import Path

from fake_engine import FakeBackend

from modeld._metrics import Metrics
from modeld.engine._scheduler import EngineScheduler
from modeld.models._capacity import MemoryBudget
from modeld.models._catalog import ModelCatalog
from modeld.sessions._manager import SessionManager
from modeld.sessions._parking import ParkingLot
from modeld.sessions._snapshots import SnapshotStore

INSTANCE = "test-instance"


class Harness:
    def __init__(self, root: Path, *, max_live: int, rows: int) -> None:
        self.backend = FakeBackend(rows)
        self.scheduler = EngineScheduler(name="fake-engine")
        self.lot = ParkingLot(
            max_live=max_live, ram_budget=1 << 20, disk_dir=root / "parked", disk_budget=1 << 30
        )
        self.manager = SessionManager(
            instance_id=INSTANCE,
            catalog=ModelCatalog(root, "fake", []),
            backend=self.backend,
            scheduler=self.scheduler,
            budget=MemoryBudget(limit_bytes=1 << 40, reserve_bytes=0),
            lot=self.lot,
            snapshots=SnapshotStore(root / "snapshots", 1 << 30),
            metrics=Metrics(),
        )
