"""The lane pool's bookkeeping (``backends.llama._lane.LanePool``) on stand-in lanes: which lane
a take finds, the bound on idle lanes (the least recently pooled goes first), the idle timeout,
``drop``, the byte count the daemon charges, and a pool of size 0 (no pooling at all). Real
llama.cpp contexts: tests/models/test_lanepool_llama.py."""

from __future__ import annotations

from typing import cast

from modeld.backends.llama._lane import Lane, LanePool


class StandIn:
    """What the pool touches of a lane."""

    def __init__(self, n_ctx: int, kv_cache_type: str = "f16", seqs: int = 4) -> None:
        self.n_ctx = n_ctx
        self.kv_cache_type = kv_cache_type
        self.seqs = seqs
        self.resets = 0
        self.closed = False

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _bytes(lane: Lane) -> int:
    return lane.seqs * lane.n_ctx * 10


def _pool(max_idle: int = 2, idle_s: float = 60.0) -> tuple[LanePool, Clock]:
    clock = Clock()
    return LanePool(_bytes, max_idle=max_idle, idle_s=idle_s, clock=clock), clock


def _lane(n_ctx: int, kv_cache_type: str = "f16") -> tuple[StandIn, Lane]:
    stand_in = StandIn(n_ctx, kv_cache_type)
    return stand_in, cast(Lane, stand_in)


def test_take_finds_a_pooled_lane_of_the_same_size_and_type_only() -> None:
    pool, _ = _pool()
    raw, lane = _lane(256)
    pool.put(lane)
    assert raw.resets == 1  # reset when pooled: a taker finds a fresh context's state
    assert pool.bytes == 4 * 256 * 10
    assert pool.take(512, "f16") is None
    assert pool.take(256, "q8_0") is None
    assert pool.take(256, "f16") is lane
    assert (len(pool), pool.bytes, pool.reused, raw.closed) == (0, 0, 1, False)
    assert pool.take(256, "f16") is None  # taken once


def test_the_pool_keeps_at_most_max_idle_lanes_and_frees_the_oldest() -> None:
    pool, _ = _pool(max_idle=2)
    lanes = [_lane(n) for n in (128, 256, 512)]
    for _, lane in lanes:
        pool.put(lane)
    assert len(pool) == 2 and pool.freed == 1
    assert [raw.closed for raw, _ in lanes] == [True, False, False]
    assert pool.bytes == 4 * (256 + 512) * 10
    assert pool.take(128, "f16") is None
    assert pool.take(512, "f16") is lanes[2][1]


def test_a_lane_idle_past_idle_s_is_freed_at_the_next_pool_event() -> None:
    pool, clock = _pool(idle_s=60.0)
    old_raw, old = _lane(256)
    pool.put(old)
    clock.now += 30
    new_raw, new = _lane(512)
    pool.put(new)
    clock.now += 31  # the first one has waited 61 s, the second 31 s
    assert pool.take(256, "f16") is None
    assert old_raw.closed and not new_raw.closed
    assert pool.bytes == 4 * 512 * 10
    assert pool.take(512, "f16") is new


def test_drop_frees_every_pooled_lane_and_says_how_many_bytes() -> None:
    pool, _ = _pool()
    lanes = [_lane(n) for n in (128, 256)]
    for _, lane in lanes:
        pool.put(lane)
    assert pool.drop() == 4 * (128 + 256) * 10
    assert all(raw.closed for raw, _ in lanes)
    assert (len(pool), pool.bytes, pool.freed) == (0, 0, 2)
    assert pool.drop() == 0


def test_drop_keeps_one_lane_of_the_size_a_session_is_about_to_take() -> None:
    pool, _ = _pool(max_idle=3)
    lanes = [_lane(n) for n in (128, 256, 256)]
    for _, lane in lanes:
        pool.put(lane)
    assert pool.drop(keep=(256, "f16")) == 4 * (128 + 256) * 10
    assert [raw.closed for raw, _ in lanes] == [True, False, True]
    assert pool.bytes == 4 * 256 * 10
    assert pool.take(256, "f16") is lanes[1][1]
    pool.put(lanes[1][1])
    assert pool.drop(keep=(256, "q8_0")) == 4 * 256 * 10  # another type: nothing kept


def test_a_pool_of_size_zero_frees_every_lane_at_once() -> None:
    pool, _ = _pool(max_idle=0)
    raw, lane = _lane(256)
    pool.put(lane)
    assert raw.closed and raw.resets == 0
    assert (len(pool), pool.bytes, pool.take(256, "f16")) == (0, 0, None)
