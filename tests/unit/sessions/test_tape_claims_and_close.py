"""Issue 15 in the session layer, over the fake engine: the cancel rule (the tape cut back to
what the client holds, on the engine thread, before anything else), CloseSession ending a
running Decode within one step, and client ids that no Attach issued."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from fake_engine import fake_spec, next_token
from session_harness import Harness

from modeld.sessions._manager import TapedStep
from modeld.sessions._session import SessionState
from modeld.sessions._types import DecodeOptions, TokenInput
from modeldconn._errors import InvalidArgument, UnknownClient

SPEC = fake_spec()
PROMPT = list(range(10, 40))


def greedy(max_tokens: int) -> DecodeOptions:
    return DecodeOptions.from_fields({"max_tokens": max_tokens, "ignore_eos": True})


def cold_tokens(prompt: list[int], max_tokens: int) -> list[int]:
    kv, out = list(prompt), []
    for _ in range(max_tokens):
        out.append(next_token(kv))
        kv.append(out[-1])
    return out


async def _read_then_abandon(h: Harness, handle: str, chunks: int) -> tuple[list[int], int]:
    """Read ``chunks`` chunks of a long Decode, then hang up; returns the ids read and the
    tape length the last chunk reported."""
    stream = h.manager.decode(handle, greedy(3000))
    received: list[int] = []
    tape_tokens = 0
    for _ in range(chunks):
        step = await stream.__anext__()
        assert isinstance(step, TapedStep)
        received.extend(step.token_ids)
        tape_tokens = step.tape_tokens
    await asyncio.sleep(0.05)  # the engine thread runs ahead of the reader meanwhile
    await stream.aclose()
    return received, tape_tokens


async def _tape_of(h: Harness, handle: str) -> list[int]:
    session = h.manager.get(handle)
    return await h.scheduler.call(lambda: list(session.tape))


async def test_each_step_reports_the_tape_as_it_was_made(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 4096)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT)))
    lengths = [step.tape_tokens async for step in h.manager.decode(session.handle, greedy(5))]
    assert lengths == [31, 32, 33, 34, 35, 35]  # 5 tokens, then the final adds none


async def test_a_cancelled_decode_leaves_more_than_the_client_read(
    make_harness: Callable[..., Harness],
) -> None:
    """The fault: without a claim the tape keeps tokens the client never received."""
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 4096)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT)))
    received, tape_tokens = await _read_then_abandon(h, session.handle, 2)
    assert tape_tokens == len(PROMPT) + len(received)
    assert len(await _tape_of(h, session.handle)) > tape_tokens


@pytest.mark.parametrize("verb", ["decode", "prefill_suffix", "ensure_prefix"])
async def test_the_claim_cuts_the_tape_and_the_continuation_equals_a_fresh_session(
    make_harness: Callable[..., Harness], verb: str
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 4096)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT)))
    received, tape_tokens = await _read_then_abandon(h, session.handle, 3)
    held = [*PROMPT, *received]
    if verb == "decode":
        steps = [s async for s in h.manager.decode(session.handle, greedy(6), held=tape_tokens)]
        continued = [t for s in steps for t in s.token_ids]
        assert steps[-1].final is not None and steps[-1].final.prompt_tokens == len(held)
        assert continued == cold_tokens(held, 6)
    elif verb == "prefill_suffix":
        r = await h.manager.prefill_suffix(session.handle, TokenInput((5, 6)), held=tape_tokens)
        assert r.resident == len(held) + 2
        assert await _tape_of(h, session.handle) == [*held, 5, 6]
    else:
        r = await h.manager.ensure_prefix(session.handle, TokenInput(tuple(held)), tape_tokens)
        # nothing is dropped, and everything the client holds is reused (the engine ran
        # ahead of the reader, so even the last received token was computed)
        assert (r.dropped, r.reused, r.prefilled) == (0, len(held), 0)


async def test_a_claim_longer_than_the_tape_is_refused_and_changes_nothing(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 4096)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT)))
    with pytest.raises(InvalidArgument) as caught:
        async for _ in h.manager.decode(session.handle, greedy(2), held=len(PROMPT) + 1):
            pass
    assert caught.value.metadata == {
        "field": "tape_tokens",
        "tape_tokens": str(len(PROMPT)),
        "claimed": str(len(PROMPT) + 1),
    }
    assert await _tape_of(h, session.handle) == PROMPT
    # an equal claim is a no-op; a zero claim empties the tape (then nothing to continue)
    steps = [s async for s in h.manager.decode(session.handle, greedy(2), held=len(PROMPT))]
    assert [t for s in steps for t in s.token_ids] == cold_tokens(PROMPT, 2)
    with pytest.raises(InvalidArgument, match="nothing to continue"):
        async for _ in h.manager.decode(session.handle, greedy(2), held=0):
            pass
    assert await _tape_of(h, session.handle) == []


async def test_close_ends_a_running_decode_within_one_step(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    session, _ = await h.manager.open(SPEC, 4096)
    await h.manager.ensure_prefix(session.handle, TokenInput(tuple(PROMPT)))
    stream = h.manager.decode(session.handle, greedy(3000))
    await stream.__anext__()
    assert await asyncio.wait_for(h.manager.close(session.handle), 1.0)
    # the engine work has stopped by the time CloseSession answers: the tape grows no more
    frozen = len(session.tape)
    await asyncio.sleep(0.05)
    assert len(session.tape) == frozen < len(PROMPT) + 3000
    assert session.state is SessionState.CLOSING
    rest = [step async for step in stream]
    final = rest[-1].final
    assert final is not None and final.stop_reason == "cancelled"
    assert session.state is SessionState.CLOSED and h.manager.session_count() == 0
    assert await h.scheduler.call(lambda: h.scheduler.depth) == 0  # the engine queue drained


async def test_a_client_id_no_attach_issued_is_refused(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    with pytest.raises(UnknownClient) as caught:
        await h.manager.open(SPEC, 1024, owner="not-a-client")
    assert caught.value.metadata == {"client_id": "not-a-client"}
    assert h.manager.session_count() == 0
    h.manager.attach("real-client")
    session, _ = await h.manager.open(SPEC, 1024, owner="real-client")
    assert session.owner == "real-client"
    assert h.manager.detach("real-client") == 1  # its lifeline closes it
    unbound, _ = await h.manager.open(SPEC, 1024)  # no header: no lifeline, by choice
    assert unbound.owner == ""
