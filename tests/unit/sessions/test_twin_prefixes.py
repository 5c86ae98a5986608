"""Sessions that start together from one long prefix compute it once: each EnsurePrefix that
finds its prefix being computed by another waits for it and copies its KV."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fake_engine import fake_spec
from session_harness import Harness

from modeld.sessions._types import TokenInput

SPEC = fake_spec()
SHARED = list(range(10, 610))


async def test_concurrent_twins_compute_the_shared_prefix_once(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(max_live=8)
    sessions = [(await h.manager.open(SPEC, 2048))[0] for _ in range(4)]
    prompts = [(*SHARED, *range(1000 + 10 * i, 1000 + 10 * i + 8)) for i in range(4)]
    work = h.backend.models[0].work
    before = work.prefilled
    results = await asyncio.gather(
        *(
            h.manager.ensure_prefix(s.handle, TokenInput(p))
            for s, p in zip(sessions, prompts, strict=True)
        )
    )
    assert work.prefilled - before == len(SHARED) + 4 * 8
    assert sorted(r.shared for r in results) == [0, len(SHARED), len(SHARED), len(SHARED)]
    assert all(r.prefix_tokens == len(SHARED) + 8 for r in results)
    # the shared part was computed once (above); how many waited for it rather than found it
    # already resident depends on when each call reached the loop (a slow machine may finish
    # the first before the last arrives), so at least one waited and none computed it again
    assert 1 <= h.manager.turns.in_flight.waits <= 3


async def test_a_twin_with_a_long_tail_of_its_own_is_not_waited_for(
    make_harness: Callable[..., Harness],
) -> None:
    """Waiting for a prompt that goes on far past the shared part would cost more than
    computing the shared part again."""
    h = make_harness(max_live=8)
    long_one, short_one = [(await h.manager.open(SPEC, 4096))[0] for _ in range(2)]
    shared = SHARED[:100]
    long_prompt = (*shared, *range(2000, 2400))
    short_prompt = (*shared, 7, 7, 7)
    await asyncio.gather(
        h.manager.ensure_prefix(long_one.handle, TokenInput(long_prompt)),
        h.manager.ensure_prefix(short_one.handle, TokenInput(short_prompt)),
    )
    # (the short one may still copy the shared part, if the long one is done before it starts)
    assert h.manager.turns.in_flight.waits == 0
