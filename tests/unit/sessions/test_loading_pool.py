"""Model loading over the fake engine: single flight, the load timeout (nothing left behind, the
daemon still usable), generations, the LRU unload under --max-loaded-models and the memory
limit (its sessions parked and restored exactly), explicit unloads, and the load metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_engine import FakeBackend, FakeModel, fake_spec, next_token

from modeld._metrics import Metrics
from modeld.engine._scheduler import EngineScheduler
from modeld.models._capacity import MemoryBudget
from modeld.models._catalog import ModelCatalog
from modeld.models._facts import ModelSpec
from modeld.sessions._manager import SessionManager
from modeld.sessions._models import ModelBusy
from modeld.sessions._parking import ParkingLot
from modeld.sessions._snapshots import SnapshotStore
from modeld.sessions._types import DecodeOptions, TokenInput
from modeldconn._errors import InsufficientMemory, ModelInUse, ModelLoadTimeout, Overloaded

A, B = fake_spec("model-a"), fake_spec("model-b")


class ClosingModel(FakeModel):
    def close(self) -> None:
        self.closed = True


class SlowBackend(FakeBackend):
    """Loads take ``load_s`` on the engine thread; every engine it made is kept, closed or not."""

    def __init__(self, load_s: float = 0.0) -> None:
        super().__init__()
        self.load_s = load_s
        self.load_threads: set[str] = set()

    def load(self, spec: ModelSpec) -> ClosingModel:
        self.load_threads.add(threading.current_thread().name)
        time.sleep(self.load_s)
        model = ClosingModel(spec.facts, self.rows)
        model.closed = False
        self.models.append(model)
        return model


class Rig:
    def __init__(self, root: Path, load_s: float, **options: object) -> None:
        self.backend = SlowBackend(load_s)
        self.scheduler = EngineScheduler(name="fake-engine")
        self.metrics = Metrics()
        self.lot = ParkingLot(
            max_live=8, ram_budget=1 << 20, disk_dir=root / "parked", disk_budget=1 << 30
        )
        limit = options.pop("limit", 1 << 40)
        assert isinstance(limit, int)
        self.manager = SessionManager(
            instance_id="test-instance",
            catalog=ModelCatalog(root, "fake", []),
            backend=self.backend,
            scheduler=self.scheduler,
            budget=MemoryBudget(limit_bytes=limit, reserve_bytes=0),
            lot=self.lot,
            snapshots=SnapshotStore(root / "snapshots", 1 << 30),
            metrics=self.metrics,
            **options,  # type: ignore[arg-type]
        )

    def model(self, spec: ModelSpec):  # type: ignore[no-untyped-def]
        return next(m for m in self.manager.loaded_models() if m.spec.key == spec.key)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    async def drained(self) -> None:
        """Every engine job queued so far has run."""
        await self.scheduler.call(lambda: None)


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.scheduler.close()


def rig(rigs: list[Rig], tmp_path: Path, load_s: float = 0.0, **options: object) -> Rig:
    made = Rig(tmp_path, load_s, **options)
    rigs.append(made)
    return made


async def continuation(rig: Rig, handle: str, n: int) -> list[int]:
    options = DecodeOptions.from_fields({"max_tokens": n, "ignore_eos": True})
    out: list[int] = []
    async for step in rig.manager.decode(handle, options):
        out.extend(step.token_ids)
    return out


async def test_concurrent_first_uses_load_once(rigs: list[Rig], tmp_path: Path) -> None:
    r = rig(rigs, tmp_path, load_s=0.1)
    opened = await asyncio.gather(*(r.manager.open(A, 64) for _ in range(8)))
    assert len(opened) == 8
    assert len(r.backend.models) == 1
    assert r.manager.stats().model_loads == 1
    model = r.model(A)
    assert (model.loads, model.generation) == (1, 1)
    assert model.last_load_s >= 0.1
    assert r.backend.load_threads == {"fake-engine"}  # loads run on the engine thread
    assert r.metric("modeld_model_loads_total", outcome="ok") == 1
    assert r.metric("modeld_model_load_seconds_count", model="model-a") == 1


async def test_load_timeout_is_typed_and_leaves_nothing(rigs: list[Rig], tmp_path: Path) -> None:
    r = rig(rigs, tmp_path, load_s=0.4)
    started = time.monotonic()
    with pytest.raises(ModelLoadTimeout) as caught:
        await r.manager.load_model(A, timeout_s=0.05)
    assert time.monotonic() - started < 0.3  # answered at the timeout, not after the load
    assert caught.value.metadata == {"name": "model-a", "timeout_s": "0.05"}
    await r.drained()  # the abandoned load has returned by now
    [engine] = r.backend.models
    assert engine.closed  # closed as soon as it returned
    model = r.model(A)
    assert (model.engine, model.loads, model.generation) == (None, 0, 0)
    assert r.manager.stats().model_loads == 0
    assert r.metric("modeld_model_loads_total", outcome="timeout") == 1
    # still usable: the next load (the daemon's own timeout) works, and serves a session
    r.backend.load_s = 0.0
    session, _ = await r.manager.open(A, 64)
    await r.manager.ensure_prefix(session.handle, TokenInput((5, 6, 7)))
    assert await continuation(r, session.handle, 3)
    assert (model.loads, model.generation) == (1, 1)


async def test_a_waiter_giving_up_does_not_cancel_the_load(rigs: list[Rig], tmp_path: Path) -> None:
    r = rig(rigs, tmp_path, load_s=0.3)
    first = asyncio.ensure_future(r.manager.load_model(A))
    await asyncio.sleep(0.02)
    cancelled = asyncio.ensure_future(r.manager.load_model(A))
    await asyncio.sleep(0.02)
    cancelled.cancel()
    with pytest.raises(ModelLoadTimeout):  # its own timeout, shorter than the load
        await r.manager.load_model(A, timeout_s=0.05)
    model = await first
    assert model.engine is not None and len(r.backend.models) == 1
    assert cancelled.cancelled()
    assert r.metric("modeld_model_loads_total", outcome="timeout") == 0


async def test_a_flight_that_expires_while_queued_loads_nothing(
    rigs: list[Rig], tmp_path: Path
) -> None:
    r = rig(rigs, tmp_path)
    r.scheduler.submit(lambda: time.sleep(0.3))  # the engine thread is busy
    with pytest.raises(ModelLoadTimeout):
        await r.manager.load_model(A, timeout_s=0.05)
    await r.drained()
    assert r.backend.models == []


async def test_the_daemons_load_timeout_applies_to_first_uses(
    rigs: list[Rig], tmp_path: Path
) -> None:
    r = rig(rigs, tmp_path, load_s=0.3, load_timeout_s=0.05)
    with pytest.raises(ModelLoadTimeout):
        await r.manager.open(A, 64)
    await r.drained()
    assert r.manager.session_count() == 0 and r.model(A).engine is None


async def test_lru_unload_parks_and_restores_exactly(rigs: list[Rig], tmp_path: Path) -> None:
    r = rig(rigs, tmp_path, max_loaded_models=1)
    session, _ = await r.manager.open(A, 256)
    prompt = tuple(range(10, 60))
    await r.manager.ensure_prefix(session.handle, TokenInput(prompt))
    first = await continuation(r, session.handle, 4)
    other, _ = await r.manager.open(B, 256)  # A is idle: unloaded, its session parked
    a = r.model(A)
    assert a.engine is None and a.generation == 2
    assert session.engine is None and session.parked is not None
    assert r.metric("modeld_model_unloads_total", reason="lru") == 1
    # A's session restores (its model loads again, B goes) and continues exactly
    more = await continuation(r, session.handle, 4)
    kv = [*prompt, *first]
    expected = []
    for _ in range(4):
        expected.append(next_token(kv))
        kv.append(expected[-1])
    assert more == expected
    assert (a.loads, a.generation) == (2, 3)
    assert r.model(B).engine is None and other.parked is not None
    assert r.metric("modeld_model_unloads_total", reason="lru") == 2


async def test_lru_picks_the_least_recently_used(rigs: list[Rig], tmp_path: Path) -> None:
    r = rig(rigs, tmp_path, max_loaded_models=2)
    c = fake_spec("model-c")
    await r.manager.load_model(A)
    await r.manager.load_model(B)
    await r.manager.load_model(A)  # A used last
    await r.manager.load_model(c)
    assert r.model(A).engine is not None and r.model(B).engine is None


async def test_nothing_idle_refuses_typed(rigs: list[Rig], tmp_path: Path) -> None:
    r = rig(rigs, tmp_path, max_loaded_models=1)
    session, _ = await r.manager.open(A, 64)
    session.begin()  # an operation runs on A's only session
    with pytest.raises(Overloaded, match="max-loaded-models 1"):
        await r.manager.load_model(B)
    session.end()
    await r.manager.load_model(B)
    assert r.model(A).engine is None


async def test_memory_limit_unloads_then_refuses_with_the_sums(
    rigs: list[Rig], tmp_path: Path
) -> None:
    r = rig(rigs, tmp_path, limit=1500)  # one fake model's weights (1000 B) fit, not two
    await r.manager.load_model(A)
    await r.manager.load_model(B)  # A unloaded to make room
    assert r.model(A).engine is None and r.model(B).engine is not None
    session, _ = await r.manager.open(B, 8)
    session.begin()
    with pytest.raises(InsufficientMemory) as caught:
        await r.manager.load_model(A)
    assert "--memory-limit 1500" in str(caught.value)
    assert caught.value.metadata["required"] == "1000"
    session.end()


async def test_explicit_unload_parks_and_bumps_the_generation(
    rigs: list[Rig], tmp_path: Path
) -> None:
    r = rig(rigs, tmp_path)
    session, _ = await r.manager.open(A, 64)
    await r.manager.ensure_prefix(session.handle, TokenInput((5, 6, 7)))
    with pytest.raises(ModelInUse):  # a live session, and not asked to park it
        await r.manager.unload_model(A, park=False)
    assert session.parked is None and r.model(A).generation == 1
    assert await r.manager.unload_model(A, park=True) == (True, 1, 2)
    assert session.parked is not None
    assert await r.manager.unload_model(A, park=False) == (False, 0, 2)
    assert r.metric("modeld_model_unloads_total", reason="explicit") == 1
    session.begin()
    await r.manager.load_model(A)
    with pytest.raises(ModelBusy):
        await r.manager.unload_model(A, park=True)
    session.end()
    assert r.model(A).generation == 3
