"""Session control in the session layer, over the fake engine: who sees what, the tiers that
ListSessions reports as EvictSession moves a session, dropped KV recomputed to the same tokens,
pins against the idle reaper, forks, and the reuse ring matching the turns' own replies."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fake_engine import fake_spec, next_token
from session_harness import INSTANCE, Harness

from modeld.sessions._parking import ParkingFull
from modeld.sessions._prefill import prefix_hash
from modeld.sessions._reuse_log import KEEP_TURNS, ReuseLog
from modeld.sessions._types import DecodeOptions, TokenInput
from modeldconn._errors import (
    InvalidArgument,
    PermissionDenied,
    SessionNotFound,
    StaleFence,
)

SPEC = fake_spec()
PROMPT = list(range(10, 300))  # over two 128-token chunks


def greedy(max_tokens: int) -> DecodeOptions:
    return DecodeOptions.from_fields({"max_tokens": max_tokens, "ignore_eos": True})


def cold_tokens(prompt: list[int], max_tokens: int) -> list[int]:
    kv, out = list(prompt), []
    for _ in range(max_tokens):
        out.append(next_token(kv))
        kv.append(out[-1])
    return out


async def generate(h: Harness, handle: str, max_tokens: int) -> list[int]:
    ids: list[int] = []
    async for step in h.manager.decode(handle, greedy(max_tokens)):
        ids.extend(step.token_ids)
    return ids


async def test_a_named_client_sees_and_controls_only_its_own_sessions(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.manager.attach("a" * 32, "agent A")
    h.manager.attach("b" * 32, "agent B")
    mine, _ = await h.manager.open(SPEC, 1024, "a" * 32)
    theirs, _ = await h.manager.open(SPEC, 1024, "b" * 32)
    control = h.manager.control

    assert [v.handle for v in control.listing("")] == [mine.handle, theirs.handle]
    [only] = control.listing("a" * 32)
    assert (only.handle, only.client_id, only.client_name) == (mine.handle, "a" * 32, "agent A")
    assert control.explain(mine.handle, "a" * 32)[0].handle == mine.handle

    refusals: list[Callable[[], object]] = [
        lambda: control.explain(theirs.handle, "a" * 32),
        lambda: control.pin(theirs.handle, "a" * 32, 10),
    ]
    for refused in refusals:
        with pytest.raises(PermissionDenied) as denied:
            refused()
        assert denied.value.metadata["handle"] == theirs.handle
    with pytest.raises(PermissionDenied):
        await control.evict(theirs.handle, "a" * 32, "ram")
    with pytest.raises(PermissionDenied):
        await control.fork(theirs.handle, "a" * 32, None)
    assert theirs.engine is not None and h.manager.session_count() == 2  # nothing happened

    # the operator (no client named) may do anything
    assert control.pin(theirs.handle, "", 5).pinned
    unknown = f"{INSTANCE}/{'0' * 32}"
    for caller in ("", "a" * 32):
        with pytest.raises(SessionNotFound):
            control.explain(unknown, caller)
        with pytest.raises(SessionNotFound):
            await control.evict(unknown, caller, "ram")
    with pytest.raises(StaleFence):
        control.pin(f"other-instance/{mine.id}", "", 1)


async def test_evict_moves_the_kv_between_tiers_and_the_listing_follows(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 1024)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT)))
    control = h.manager.control
    [view] = control.listing("")
    assert (view.residency, view.kv_bytes, view.tape_tokens) == ("live", session.kv_bytes, 290)
    assert view.prefix_hash == prefix_hash(PROMPT)

    seen = []
    for to in ("ram", "disk", "ram", "disk"):
        seen.append((await control.evict(session.handle, "", to)).residency)
        assert control.listing("")[0].residency == to
    assert seen == ["ram", "disk", "ram", "disk"]
    assert h.lot.ram_bytes == 0 and h.lot.disk_bytes > 0
    assert len(list((h.lot.disk_dir).glob("*.kv"))) == 1

    # the next turn restores it from disk, and says so
    assert await generate(h, session.handle, 4) == cold_tokens(PROMPT, 4)
    turn = control.explain(session.handle, "", 1)[1][0]
    assert (turn.operation, turn.restored_from, turn.generated) == ("decode", "disk", 4)
    assert h.lot.disk_bytes == 0 and control.listing("")[0].residency == "live"

    with pytest.raises(InvalidArgument) as bad:
        await control.evict(session.handle, "", "tape")
    assert bad.value.metadata["field"] == "to"


async def test_dropped_kv_keeps_the_tape_and_the_next_turn_recomputes_the_same_tokens(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 1024)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT)))
    view = await h.manager.control.evict(session.handle, "", "drop")
    assert (view.residency, view.kv_bytes, view.tape_tokens) == ("dropped", 0, len(PROMPT))
    again = await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT)))
    assert (again.reused, again.prefilled) == (0, len(PROMPT))
    assert await generate(h, session.handle, 6) == cold_tokens(PROMPT, 6)


async def test_a_pinned_session_is_neither_parked_nor_closed_by_the_idle_reaper(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    pinned, _ = await h.manager.open(SPEC, 1024)
    other, _ = await h.manager.open(SPEC, 1024)
    for s in (pinned, other):
        await h.manager.ensure_prefix(s.handle, TokenInput(tuple(PROMPT[:20])))
    view = h.manager.control.pin(pinned.handle, "", 60)
    assert view.pinned and 59 < view.pin_remaining_s <= 60
    time.sleep(0.05)
    await h.manager.reap(park_after_s=0.01, close_after_s=0)
    assert pinned.engine is not None and other.engine is None
    await h.manager.reap(park_after_s=0, close_after_s=0.01)
    assert h.manager.session_count() == 1  # the pinned one is still open
    assert not h.manager.control.pin(pinned.handle, "", 0).pinned  # 0 unpins
    await h.manager.reap(park_after_s=0.01, close_after_s=0)
    assert pinned.engine is None
    with pytest.raises(InvalidArgument):
        h.manager.control.pin(pinned.handle, "", -1)


async def test_a_fork_holds_the_first_k_tokens_and_continues_as_a_cold_run_would(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.manager.attach("c" * 32, "forker")
    source, _ = await h.manager.open(SPEC, 1024, "c" * 32)
    await h.manager.ensure_prefix(source.handle, TokenInput(tuple(PROMPT)))
    await generate(h, source.handle, 3)
    before = list(source.tape)
    for k, exact in ((200, False), (len(PROMPT) + 3, False), (256, True), (0, False)):
        source.exact_prefix = exact
        fork, resolved = await h.manager.control.fork(source.handle, "c" * 32, k)
        assert fork.owner == "c" * 32 and resolved.n_ctx == source.n_ctx
        assert fork.tape == before[:k] and fork.exact_prefix == exact
        turn = fork.reuse.last()[-1]
        assert turn.operation == "fork" and turn.shared == (k if k <= len(PROMPT) + 2 else k - 1)
        if k:
            assert await generate(h, fork.handle, 5) == cold_tokens(before[:k], 5)
        assert source.tape == before  # the source is left as it was
    with pytest.raises(InvalidArgument) as past:
        await h.manager.control.fork(source.handle, "", len(before) + 1)
    assert past.value.metadata["field"] == "at_tokens"
    with pytest.raises(InvalidArgument) as small:
        await h.manager.control.fork(source.handle, "", 100, n_ctx=50)
    assert small.value.metadata["field"] == "n_ctx"


async def test_explain_records_each_turn_as_its_reply_said(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 1024)
    first = await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT[:200])))
    second = await h.manager.ensure_prefix(session.handle, TokenInput((*PROMPT[:150], 7, 8, 9)))
    suffix = await h.manager.prefill_suffix(session.handle, TokenInput((11, 12)))
    await generate(h, session.handle, 4)
    view, turns = h.manager.control.explain(session.handle, "")
    assert [t.operation for t in turns] == [
        "ensure_prefix",
        "ensure_prefix",
        "prefill_suffix",
        "decode",
    ]
    for turn, reply in zip(turns[:2], (first, second), strict=True):
        assert (turn.reused, turn.prefilled, turn.dropped, turn.shared) == (
            reply.reused,
            reply.prefilled,
            reply.dropped,
            reply.shared,
        )
    assert (turns[2].prefilled, turns[2].reused) == (suffix.prefilled, 153)
    assert (turns[3].generated, turns[3].prefilled) == (4, 0)
    assert [t.operation for t in h.manager.control.explain(session.handle, "", 2)[1]] == [
        "prefill_suffix",
        "decode",
    ]
    assert view.tape_tokens == 159


def test_the_ring_keeps_the_last_turns_and_the_hash_follows_the_tape() -> None:
    log = ReuseLog()
    for i in range(KEEP_TURNS + 5):
        log.record("decode", generated=i)
    assert [t.generated for t in log.last()] == list(range(5, KEEP_TURNS + 5))
    tape = list(range(1000))
    assert log.tape_hash(tape) == prefix_hash(tape)
    tape.append(5)  # a Decode's append: extended from the cached state
    assert log.tape_hash(tape) == prefix_hash(tape)
    other = tape[:10]  # a new list: hashed afresh
    assert log.tape_hash(other) == prefix_hash(other)
    assert log.tape_hash([]) == prefix_hash([])


async def test_a_tier_that_cannot_take_the_kv_is_refused_typed_and_nothing_moves(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 1024)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT)))
    h.lot.disk_budget = 0  # --park-disk 0: disk parking off
    with pytest.raises(ParkingFull) as full:
        await h.manager.control.evict(session.handle, "", "disk")
    assert full.value.metadata["why"] == "disk_budget"
    assert session.engine is not None and h.lot.disk_bytes == 0
    await h.manager.control.evict(session.handle, "", "ram")
    h.lot.ram_budget = 0
    with pytest.raises(ParkingFull):  # ram -> disk refused: it stays in RAM
        await h.manager.control.evict(session.handle, "", "disk")
    assert h.manager.control.listing("")[0].residency == "ram"
    live, _ = await h.manager.open(SPEC, 1024)
    await h.manager.ensure_prefix(live.handle, TokenInput(tuple(PROMPT[:50])))
    with pytest.raises(ParkingFull) as ram:
        await h.manager.control.evict(live.handle, "", "ram")
    assert ram.value.metadata["why"] == "ram_budget" and live.engine is not None
