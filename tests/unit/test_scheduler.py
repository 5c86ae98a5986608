"""The engine scheduler's turns: fair between tenants (clients), FIFO within one, and a
cancelled stream closed on the engine thread before the canceller goes on."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Generator, Iterator

import pytest

from modeld.engine._scheduler import TENANT, EngineScheduler
from modeldconn._errors import Overloaded


@pytest.fixture
def scheduler() -> Iterator[EngineScheduler]:
    made = EngineScheduler(name="test-engine", max_pending=64)
    yield made
    made.close()


def _steps(
    log: list[str], name: str, count: int, seconds: float = 0.0
) -> Generator[int, None, None]:
    for i in range(count):
        time.sleep(seconds)  # a step's engine work
        log.append(name)
        yield i


async def _drain(
    scheduler: EngineScheduler, tenant: str, steps: Generator[int, None, None]
) -> None:
    TENANT.set(tenant)  # this task's context only
    async for _ in scheduler.stream(steps):
        pass


async def test_a_busy_client_cannot_starve_another(scheduler: EngineScheduler) -> None:
    log: list[str] = []
    # the greedy client's steps cost engine time (2 ms each); the bystander's cost ~nothing
    greedy = [_drain(scheduler, "greedy", _steps(log, f"g{i}", 10, 0.002)) for i in range(30)]
    bystander = _drain(scheduler, "bystander", _steps(log, "b", 5))
    await asyncio.gather(*greedy, bystander)
    at = [i for i, name in enumerate(log) if name == "b"]
    assert len(at) == 5
    # every bystander step waits for at most one of the greedy client's 300 steps
    assert at[0] <= 1 and all(later - earlier <= 2 for earlier, later in itertools.pairwise(at))


async def test_one_tenant_is_first_come_first_served(scheduler: EngineScheduler) -> None:
    log: list[str] = []
    await asyncio.gather(*(_drain(scheduler, "one", _steps(log, str(i), 3)) for i in range(3)))
    assert log == ["0", "1", "2"] * 3


async def test_a_call_from_another_tenant_goes_next(scheduler: EngineScheduler) -> None:
    log: list[str] = []
    greedy = [
        asyncio.ensure_future(_drain(scheduler, "greedy", _steps(log, f"g{i}", 20, 0.002)))
        for i in range(10)
    ]
    await asyncio.sleep(0.05)
    TENANT.set("other")
    submitted_at = len(log)
    done_at = await scheduler.call(lambda: len(log))
    assert 0 < submitted_at < 200
    # at most the step in flight and one more greedy step ran before it, of ~190 waiting
    assert done_at - submitted_at <= 2
    await asyncio.gather(*greedy)


async def test_cancelled_stream_is_closed_before_the_canceller_goes_on(
    scheduler: EngineScheduler,
) -> None:
    closed = threading.Event()

    def endless() -> Generator[int, None, None]:
        try:
            while True:
                yield 1
        finally:
            closed.set()

    stream = scheduler.stream(endless())
    await stream.__anext__()
    await stream.aclose()
    assert closed.is_set()


async def test_admission_counts_each_tenant_on_its_own(scheduler: EngineScheduler) -> None:
    gate = threading.Event()
    TENANT.set("greedy")
    greedy = [asyncio.ensure_future(scheduler.call(gate.wait)) for _ in range(70)]
    try:
        await asyncio.sleep(0.05)  # one runs (blocked), 64 wait, the rest were refused
        refused = [t for t in greedy if t.done() and isinstance(t.exception(), Overloaded)]
        assert 1 <= len(refused) <= 70 - 64  # (the first may or may not have left the queue)
        TENANT.set("other")
        served = asyncio.ensure_future(scheduler.call(lambda: "served"))
        await asyncio.sleep(0.05)
        assert not served.done()  # admitted, waiting behind the blocked job
    finally:
        gate.set()
    assert await served == "served"
    await asyncio.gather(*greedy, return_exceptions=True)


async def test_short_turns_go_ahead_of_long_ones(scheduler: EngineScheduler) -> None:
    """The tenant with the least engine time goes next: a client whose jobs are short waits
    for the long job in flight, never for the one after it too."""
    log: list[str] = []
    long_steps = asyncio.ensure_future(_drain(scheduler, "prefill", _steps(log, "P", 40, 0.03)))
    await asyncio.sleep(0.05)
    TENANT.set("bystander")
    for _ in range(5):
        await asyncio.sleep(0.005)  # arrives while a long step runs, after it queued its next
        await scheduler.call(lambda: log.append("b"))
    at = [i for i, name in enumerate(log) if name == "b"]
    assert all(later - earlier <= 2 for earlier, later in itertools.pairwise(at)), log
    await long_steps
