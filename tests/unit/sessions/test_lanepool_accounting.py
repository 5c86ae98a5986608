"""Pooled contexts in the memory budget, over the fake engine: their KV bytes count as in use,
admission counts them as free (reclaimable), and opening a context frees them first when the
session would not fit beside them, and only then. (The llama engine's pool itself:
tests/unit/test_lanepool_unit.py, tests/models/test_lanepool_llama.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_engine import FakeBackend, FakeModel, fake_spec

from modeld._metrics import Metrics
from modeld.engine._scheduler import EngineScheduler
from modeld.models._capacity import MemoryBudget
from modeld.models._catalog import ModelCatalog
from modeld.models._facts import ModelSpec
from modeld.sessions._manager import SessionManager
from modeld.sessions._parking import ParkingLot
from modeld.sessions._snapshots import SnapshotStore
from modeldconn._errors import InsufficientMemory

SPEC = fake_spec("pooling")
PER_TOKEN = SPEC.facts.kv_bytes_per_token_at("f16")  # 8 B
WEIGHTS = SPEC.facts.file_bytes  # 1000 B
LIMIT = WEIGHTS + 1000 * PER_TOKEN  # room for 1,000 tokens of KV beside the weights


class PoolingModel(FakeModel):
    """A fake engine holding ``pooled`` bytes of empty contexts, as the llama engine's pool."""

    pooled = 0
    drops = 0
    kept: tuple[int, str] | None = None

    def pooled_bytes(self) -> int:
        return self.pooled

    def drop_pooled(self, keep: tuple[int, str] | None = None) -> int:
        freed, self.pooled = self.pooled, 0
        self.drops += 1
        self.kept = keep
        return freed


class PoolingBackend(FakeBackend):
    def load(self, spec: ModelSpec) -> PoolingModel:
        model = PoolingModel(spec.facts, self.rows)
        self.models.append(model)
        return model


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[SessionManager]:
    scheduler = EngineScheduler(name="fake-engine")
    made = SessionManager(
        instance_id="test-instance",
        catalog=ModelCatalog(tmp_path, "fake", []),
        backend=PoolingBackend(),  # type: ignore[arg-type]  # a fake: no grammar side
        scheduler=scheduler,
        budget=MemoryBudget(limit_bytes=LIMIT, reserve_bytes=0),
        lot=ParkingLot(
            max_live=8, ram_budget=1 << 20, disk_dir=tmp_path / "parked", disk_budget=1 << 30
        ),
        snapshots=SnapshotStore(tmp_path / "snapshots", 1 << 30),
        metrics=Metrics(),
    )
    yield made
    scheduler.close()


async def _engine(manager: SessionManager) -> PoolingModel:
    loaded = await manager.load_model(SPEC)
    assert isinstance(loaded.engine, PoolingModel)
    return loaded.engine


async def test_pooled_bytes_are_in_use_and_counted_free(manager: SessionManager) -> None:
    engine = await _engine(manager)
    pool = manager._pool
    engine.pooled = 600 * PER_TOKEN
    assert pool.in_use() == WEIGHTS + 600 * PER_TOKEN
    # reclaimable: what fits is judged as if they were freed
    assert manager.capacity(SPEC).free_bytes == 1000 * PER_TOKEN
    assert manager.capacity(SPEC).memory_fit_context == 1000


async def test_a_context_that_does_not_fit_beside_pooled_ones_frees_them(
    manager: SessionManager,
) -> None:
    engine = await _engine(manager)
    engine.pooled = 600 * PER_TOKEN
    await manager.open(SPEC, 500)  # 500 + 600 > 1000 tokens: the pooled ones go
    assert (engine.drops, engine.pooled) == (1, 0)
    assert engine.kept == (500, "f16")  # but one of the opening session's size may stay
    assert manager._pool.in_use() == WEIGHTS + 500 * PER_TOKEN


async def test_pooled_contexts_stay_while_the_session_fits_beside_them(
    manager: SessionManager,
) -> None:
    engine = await _engine(manager)
    engine.pooled = 300 * PER_TOKEN
    await manager.open(SPEC, 500)  # 500 + 300 <= 1000
    assert (engine.drops, engine.pooled) == (0, 300 * PER_TOKEN)
    assert manager._pool.in_use() == WEIGHTS + 800 * PER_TOKEN
    # the next one fits only once they are freed: admitted, and they go
    await manager.open(SPEC, 400)
    assert (engine.drops, engine.pooled) == (1, 0)
    # and what does not fit even without pooled contexts is still refused, with the sums
    with pytest.raises(InsufficientMemory):
        await manager.open(SPEC, 200)
