"""The reuse rule of exact_prefix and the chunk arithmetic, without an engine."""

from __future__ import annotations

from modeld.sessions._prefill import PREFIX_CHUNK as C
from modeld.sessions._prefill import chunk_floor, exact_keep


def test_whole_chunks_only() -> None:
    assert chunk_floor(0) == 0 and chunk_floor(C - 1) == 0 and chunk_floor(C) == C
    # the shared part ends inside a chunk: that chunk is recomputed with the new tokens
    assert exact_keep(aligned=5 * C + 7, common=5 * C + 7, target=5 * C + 40) == 5 * C
    # the prompt is the exact KV itself: its last chunk was computed at exactly this length
    assert exact_keep(aligned=5 * C + 7, common=5 * C + 7, target=5 * C + 7) == 5 * C + 7
    # a shorter prompt ending inside a chunk: that chunk was computed longer, recompute it
    assert exact_keep(aligned=5 * C + 7, common=5 * C + 7, target=3 * C + 1) == 3 * C
    assert exact_keep(aligned=5 * C + 7, common=5 * C + 7, target=3 * C) == 3 * C


def test_generated_rows_are_never_kept() -> None:
    # a tape of a 2C+5 prompt plus 10 generated tokens, the next turn extends all of it
    assert exact_keep(aligned=2 * C + 5, common=2 * C + 15, target=2 * C + 40) == 2 * C


def test_nothing_exact_keeps_nothing() -> None:
    assert exact_keep(aligned=0, common=3 * C, target=4 * C) == 0
    assert exact_keep(aligned=0, common=0, target=0) == 0
