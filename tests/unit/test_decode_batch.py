"""Which sessions' sampled tokens one decode call computes (``modeld.engine._batching``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modeld.engine._batching import feeds_for


@dataclass
class FakeEngine:
    kv_len: int
    batch_group: object
    n_ctx: int = 64


@dataclass
class FakeSession:
    engine: FakeEngine | None
    tape: list[int] = field(default_factory=list)
    decoding: bool = True


def _session(group: object, tape: list[int], resident: int, decoding: bool = True) -> FakeSession:
    return FakeSession(FakeEngine(resident, group), tape, decoding)


def test_only_pending_tokens_of_decoding_sessions_in_the_same_group() -> None:
    lane, other_lane = object(), object()
    turn = _session(lane, [1, 2, 3], 2)
    pending = _session(lane, [4, 5], 1)
    computed = _session(lane, [6, 7], 2)  # its token is resident already
    idle = _session(lane, [8, 9], 1, decoding=False)  # its decode ended: not worth computing
    elsewhere = _session(other_lane, [10, 11], 1)  # another context: cannot share the call
    parked = FakeSession(None, [12, 13])
    everyone = [turn, pending, computed, idle, elsewhere, parked]
    feeds = feeds_for(turn, everyone, max_rows=8)  # type: ignore[arg-type]
    assert [(engine, token) for engine, token in feeds] == [
        (turn.engine, 3),
        (pending.engine, 5),
    ]


def test_at_most_max_rows_and_the_turn_always_first() -> None:
    lane = object()
    sessions = [_session(lane, [i, 100 + i], 1) for i in range(6)]
    feeds = feeds_for(sessions[3], sessions, max_rows=4)  # type: ignore[arg-type]
    assert [token for _, token in feeds] == [103, 100, 101, 102]
    assert feeds_for(sessions[3], sessions, max_rows=1) == [(sessions[3].engine, 103)]  # type: ignore[arg-type]
