"""The prefix index on its own: longest lookups, updates that truncate, removal, staleness."""

from __future__ import annotations

from modeld.sessions._prefix_index import BLOCK, PrefixIndex, common_prefix


def test_longest_whole_blocks_and_exclusion() -> None:
    index: PrefixIndex[str] = PrefixIndex()
    a = list(range(100))
    index.update("a", a)
    index.update("b", a[:40])
    assert index.longest(a) == (96, ["a"])  # 6 whole blocks
    assert index.longest(a, exclude="a") == (32, ["b"])
    assert index.longest([*a[:20], -1, *a[21:]]) == (BLOCK, index.longest(a[:16])[1])
    assert index.longest([999] * 50) == (0, [])


def test_update_follows_a_truncated_and_regrown_tape() -> None:
    index: PrefixIndex[str] = PrefixIndex()
    index.update("a", list(range(64)))
    index.update("a", [*range(20), *range(500, 544)])
    assert index.longest(list(range(64)))[0] == BLOCK
    assert index.longest([*range(20), *range(500, 544)])[0] == 64
    index.remove("a")
    assert index.longest(list(range(64))) == (0, []) and len(index) == 0


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([1, 2, 3], (1, 9, 3)) == 1
    assert common_prefix([], [1]) == 0
    long = list(range(5000))
    assert common_prefix(long, [*long[:3333], -1]) == 3333
