"""The session layer over a fake engine: reuse arithmetic, busy, parking order, donor sharing,
close while busy, and churn against the engine thread — deterministic and in milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from fake_engine import fake_spec, next_token
from session_harness import Harness

import modeld.sessions._prefill as prefill_module
from modeld.sessions._inputs import MAX_TOKEN_BYTES
from modeld.sessions._session import SessionState
from modeld.sessions._types import DecodeOptions, TextInput, TokenInput
from modeldconn._errors import ContextOverflow, SessionBusy, SessionNotFound

SPEC = fake_spec()


def greedy(max_tokens: int) -> DecodeOptions:
    return DecodeOptions.from_fields({"max_tokens": max_tokens, "ignore_eos": True})


async def generate(harness: Harness, handle: str, max_tokens: int) -> list[int]:
    tokens: list[int] = []
    async for step in harness.manager.decode(handle, greedy(max_tokens)):
        tokens.extend(step.token_ids)
    return tokens


def cold_tokens(prompt: list[int], max_tokens: int) -> list[int]:
    kv, out = list(prompt), []
    for _ in range(max_tokens):
        out.append(next_token(kv))
        kv.append(out[-1])
    return out


async def test_reuse_arithmetic(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 1024)
    first = list(range(10, 110))
    r = await h.manager.ensure_prefix(session.handle, TokenInput(tuple(first)))
    assert (r.reused, r.prefilled, r.dropped, r.resident) == (0, 100, 0, 100)
    grown = [*first, *range(300, 311)]
    r = await h.manager.ensure_prefix(session.handle, TokenInput(tuple(grown)))
    assert (r.reused, r.prefilled, r.dropped, r.resident) == (100, 11, 0, 111)
    edited = [*first[:50], 7, 7, 7]
    r = await h.manager.ensure_prefix(session.handle, TokenInput(tuple(edited)))
    assert (r.reused, r.prefilled, r.dropped, r.resident) == (50, 3, 61, 53)
    out = await generate(h, session.handle, 5)
    assert out == cold_tokens(edited, 5)
    # the last sampled token is on the tape, not computed: the next turn computes it
    r = await h.manager.ensure_prefix(session.handle, TokenInput(tuple(edited + out)))
    assert (r.reused, r.prefilled, r.dropped) == (len(edited) + 4, 1, 0)
    assert h.backend.models[0].work.threads == {"fake-engine"}  # only the engine thread


async def test_second_operation_is_busy_then_session_serves(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 4096)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(range(10, 40))))
    stream = h.manager.decode(session.handle, greedy(3000))
    await stream.__anext__()
    assert session.state is SessionState.DECODING
    with pytest.raises(SessionBusy):
        await h.manager.ensure_prefix(session.handle, TokenInput((5,)))
    await stream.aclose()  # the client hangs up: closed on the engine thread, then idle
    assert session.state is SessionState.IDLE
    r = await h.manager.ensure_prefix(session.handle, TokenInput(tuple(range(10, 40))))
    assert r.reused == 30


async def test_parking_order_is_least_recently_used(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(max_live=2)
    a, _ = await h.manager.open(SPEC, 256)
    b, _ = await h.manager.open(SPEC, 256)
    for s in (a, b):
        await h.manager.ensure_prefix(s.handle, TokenInput(tuple(range(10, 60))))
    await h.manager.ensure_prefix(a.handle, TokenInput(tuple(range(10, 61))))  # a used last
    c, _ = await h.manager.open(SPEC, 256)  # needs a context: b is the LRU idle one
    assert b.engine is None and b.parked is not None
    assert a.engine is not None and c.engine is not None
    # b comes back exactly: its next turn reuses everything and decodes its cold tokens
    r = await h.manager.ensure_prefix(b.handle, TokenInput(tuple(range(10, 60))))
    assert (r.reused, r.prefilled) == (50, 0)
    assert await generate(h, b.handle, 4) == cold_tokens(list(range(10, 60)), 4)
    assert h.manager.stats().parks == 2 and h.manager.stats().restores == 1  # b, then a or c


async def test_donor_sharing_copies_the_longest_prefix(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    head = list(range(10, 90))
    donor, _ = await h.manager.open(SPEC, 1024)
    await h.manager.ensure_prefix(donor.handle, TokenInput(tuple([*head, *range(500, 540)])))
    receiver, _ = await h.manager.open(SPEC, 1024)
    wanted = [*head, 3, 4, 5]
    r = await h.manager.ensure_prefix(receiver.handle, TokenInput(tuple(wanted)))
    assert (r.shared, r.reused, r.prefilled) == (80, 80, 3)
    assert await generate(h, receiver.handle, 6) == cold_tokens(wanted, 6)
    # too short to be worth a copy
    small, _ = await h.manager.open(SPEC, 1024)
    r = await h.manager.ensure_prefix(small.handle, TokenInput(tuple(head[:10])))
    assert r.shared == 0


async def test_a_donor_that_cannot_be_copied_is_a_miss_never_fatal(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    big, _ = await h.manager.open(SPEC, 2048)
    await h.manager.ensure_prefix(big.handle, TokenInput(tuple([*range(10, 500), *[450] * 400])))
    small, _ = await h.manager.open(SPEC, 256)
    wanted = list(range(10, 60))
    r = await h.manager.ensure_prefix(small.handle, TokenInput(tuple(wanted)))
    assert (r.shared, r.reused, r.prefilled) == (0, 0, 50)
    assert h.backend.models[0].refused_adoptions == 1
    assert h.manager.stats().prefix_share_failures == 1
    assert await generate(h, small.handle, 6) == cold_tokens(wanted, 6)


async def test_close_while_busy_frees_when_the_operation_ends(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 4096)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(range(10, 40))))
    stream = h.manager.decode(session.handle, greedy(3000))
    await stream.__anext__()
    assert await h.manager.close(session.handle)
    assert session.state is SessionState.CLOSING
    assert h.manager.session_count() == 1  # still running
    await stream.aclose()
    assert session.state is SessionState.CLOSED and h.manager.session_count() == 0
    with pytest.raises(SessionNotFound, match="closed"):
        await h.manager.ensure_prefix(session.handle, TokenInput((5,)))
    await h.scheduler.call(lambda: None)
    assert session.engine is None and len(session.model.index) == 0


async def test_churn_against_the_engine_thread(make_harness: Callable[..., Harness]) -> None:
    """The fault the table's copy-on-write fixes: the loop opening and closing sessions while
    the engine thread looks for donors among hundreds of them."""
    h = make_harness(max_live=1000)
    head = list(range(10, 2010))
    idle = []
    for i in range(200):
        s, _ = await h.manager.open(SPEC, 4096)
        await h.manager.ensure_prefix(
            s.handle, TokenInput(tuple([*head, *range(3000 + i, 3000 + i + 100)]))
        )
        idle.append(s)
    worker, _ = await h.manager.open(SPEC, 4096)
    stop = asyncio.Event()

    async def churn() -> int:
        opened = 0
        while not stop.is_set():
            s, _ = await h.manager.open(SPEC, 64)
            await h.manager.close(s.handle)
            opened += 1
        return opened

    churner = asyncio.ensure_future(churn())
    for turn in range(300):
        prompt = [*head, *range(9000 + turn % 7, 9000 + turn % 7 + 40)]
        await h.manager.ensure_prefix(worker.handle, TokenInput(tuple(prompt)))
    stop.set()
    assert await churner > 0
    assert h.manager.session_count() == 201


async def test_donor_search_compares_a_bounded_number_of_tapes(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """O(prompt), whatever the number of sessions: only a few candidates' tapes are compared."""
    h = make_harness(max_live=1000)
    head = list(range(10, 410))
    for i in range(60):
        s, _ = await h.manager.open(SPEC, 1024)
        await h.manager.ensure_prefix(s.handle, TokenInput(tuple([*head, 5000 + i])))
    compared: list[int] = []
    real = prefill_module.common_prefix

    def counting(a: list[int], b: list[int]) -> int:
        compared.append(1)
        return real(a, b)

    monkeypatch.setattr(prefill_module, "common_prefix", counting)
    probe, _ = await h.manager.open(SPEC, 1024)
    r = await h.manager.ensure_prefix(probe.handle, TokenInput(tuple([*head, 7, 7])))
    assert r.shared == 400
    assert len(compared) <= 1 + prefill_module._CANDIDATES  # its own tape, then candidates


async def test_text_is_tokenized_off_the_engine_thread(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 1024)
    await h.manager.ensure_prefix(session.handle, TextInput("hello there"))
    await h.manager.prefill_suffix(session.handle, TextInput(" and more"))
    work = h.backend.models[0].work
    assert work.tokenize_threads and "fake-engine" not in work.tokenize_threads
    assert work.threads == {"fake-engine"}  # the KV only ever on the engine thread


async def test_an_input_far_over_the_context_is_refused_before_tokenizing(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 256)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(range(10, 50))))
    huge = "x" * (256 * MAX_TOKEN_BYTES + 1)
    with pytest.raises(ContextOverflow) as caught:
        await h.manager.prefill_suffix(session.handle, TextInput(huge))
    assert caught.value.metadata["stage"] == "prefill_suffix"
    assert int(caught.value.metadata["additional"]) > 256 - 40
    assert not h.backend.models[0].work.tokenize_threads  # never tokenized
    r = await h.manager.ensure_prefix(session.handle, TokenInput(tuple(range(10, 50))))
    assert (r.reused, r.prefilled) == (40, 0)  # and the session is as it was


async def test_one_client_cannot_hold_every_live_context_while_others_are_attached(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(max_live=2)
    h.manager.attach("greedy")
    h.manager.attach("bystander")
    prompt = TokenInput(tuple(range(10, 30)))
    a, _ = await h.manager.open(SPEC, 4096, owner="greedy")
    b, _ = await h.manager.open(SPEC, 4096, owner="greedy")
    for s in (a, b):
        await h.manager.ensure_prefix(s.handle, prompt)
    first = h.manager.decode(a.handle, greedy(3000))
    await first.__anext__()  # a decodes: 1 of the 2 contexts busy, its share
    second = asyncio.ensure_future(generate(h, b.handle, 3))
    await asyncio.sleep(0.3)
    assert not second.done()  # b waits: greedy may not take the last context
    mine, _ = await h.manager.open(SPEC, 256, owner="bystander")  # the bystander gets it
    await h.manager.ensure_prefix(mine.handle, prompt)
    assert await generate(h, mine.handle, 3) == cold_tokens(list(prompt.ids), 3)
    await first.aclose()
    assert await second == cold_tokens(list(prompt.ids), 3)  # and b runs once a is done
