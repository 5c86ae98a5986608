"""A long prefill shares the engine: while another client uses it, a session without
exact_prefix computes each aligned chunk in calls sized by time (what the other client waits
for), and a session with exact_prefix keeps its whole chunks, load or not."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from fake_engine import fake_spec
from session_harness import Harness

from modeld.engine._scheduler import TENANT, EngineScheduler
from modeld.sessions._prefill import CONTENDED_CALL, MIN_CONTENDED_CALL, PREFIX_CHUNK
from modeld.sessions._types import TokenInput

SPEC = fake_spec()
PROMPT = tuple(range(10, 10 + 2 * PREFIX_CHUNK + 44))


async def _prefill_calls(h: Harness, *, exact: bool, prompt: tuple[int, ...] = PROMPT) -> list[int]:
    session, _ = await h.manager.open(SPEC, 1024)
    session.exact_prefix = exact
    work = h.backend.models[0].work
    before = len(work.prefill_calls)
    await h.manager.ensure_prefix(session.handle, TokenInput(prompt))
    return work.prefill_calls[before:]


async def test_a_shared_engine_splits_chunks_by_time_unless_exact(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.manager._prefill._contended = lambda: True
    h.manager._prefill._slice_s = 0.016  # 16 tokens at 1 ms a token
    await _prefill_calls(h, exact=False, prompt=(5, 6, 7))  # loads the model
    h.backend.models[0].seconds_per_token = 0.001
    calls = await _prefill_calls(h, exact=False)
    assert sum(calls) == len(PROMPT)
    assert calls[0] == CONTENDED_CALL  # before the first call there is no speed to go by
    starts = [sum(calls[:i]) for i in range(len(calls))]
    for start, n in zip(starts[1:], calls[1:], strict=True):
        ends_a_chunk = (start + n) % PREFIX_CHUNK == 0 or start + n == len(PROMPT)
        assert n <= 20 and (n >= MIN_CONTENDED_CALL or ends_a_chunk), calls  # ~16 each
    # never across an aligned chunk's boundary
    assert all(
        start // PREFIX_CHUNK == (start + n - 1) // PREFIX_CHUNK
        for start, n in zip(starts, calls, strict=True)
    )
    h.backend.models[0].seconds_per_token = 0.0
    exact = await _prefill_calls(h, exact=True)
    assert exact == [PREFIX_CHUNK, PREFIX_CHUNK, 44]


async def test_alone_the_chunks_stay_whole(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    assert await _prefill_calls(h, exact=False) == [PREFIX_CHUNK, PREFIX_CHUNK, 44]


async def test_contended_means_another_client_now_or_just_now() -> None:
    scheduler = EngineScheduler(name="contention-test")
    seen: list[bool] = []
    gate = threading.Event()

    def look(window: float = 0.5) -> None:
        seen.append(scheduler.contended(window))

    try:
        assert not scheduler.contended()  # off the engine thread, no job: never
        TENANT.set("a")
        await scheduler.call(look)  # alone
        TENANT.set("b")
        await scheduler.call(look)  # "a" ended a moment ago
        await scheduler.call(look, 0.0)  # ... but not within no time at all
        TENANT.set("a")
        blocked = asyncio.ensure_future(scheduler.call(gate.wait))
        await asyncio.sleep(0.05)
        TENANT.set("b")
        waiting = asyncio.ensure_future(scheduler.call(look, 0.0))  # queued behind "a"
        TENANT.set("a")
        queued = asyncio.ensure_future(scheduler.call(look, 0.0))  # "b" waits
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(blocked, waiting, queued)
        time.sleep(0.01)
    finally:
        scheduler.close()
    assert seen[:3] == [False, True, False]
    assert sorted(seen[3:]) == [False, True]
