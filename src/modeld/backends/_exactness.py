"""The batch-exactness probe both backends run once per model load.

Engines may switch to other kernels for wider batches (llama.cpp's CPU matmuls do from 8 rows
on this project's machine; OpenVINO's bf16 path from 2), so a row decoded in a batch can differ
in the last bits from the same row decoded alone. Modeld batches decode steps only as far as
they are *exact*; this measures how far that is. The engine-specific parts (how to decode one
row, several rows, and how to undo a probe step) come in as callables, so the measurement is
written once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["exact_decode_rows"]


def exact_decode_rows(
    up_to: int,
    alone: Callable[[int], np.ndarray],
    together: Callable[[int], Sequence[np.ndarray] | None],
    undo: Callable[[Sequence[int]], None],
) -> int:
    """Up to how many rows (1..``up_to``) one batched decode step gives every row logits
    bit-identical to the same row decoded alone; 1 means batching is never exact here.

    Every probe row has its own short history resident already; a *step* decodes one more
    token per row at the same position each time.

    :param alone: ``alone(row)`` decodes row ``row``'s step by itself and returns a copy of its
        logits (float32, ``(vocab,)``).
    :param together: ``together(n)`` decodes the steps of rows ``0..n-1`` in one call and
        returns their logits in row order (views are fine: they are compared before the next
        call), or None when the engine refused a batch that wide.
    :param undo: ``undo(rows)`` forgets the step just decoded for those rows, so the next call
        starts from the same history (a no-op for engines told each row's length per call).
    """
    if up_to < 2:
        return 1
    solo: list[np.ndarray] = []
    for row in range(up_to):
        solo.append(alone(row))
        undo([row])
    exact = 1
    for rows in range(2, up_to + 1):
        batched = together(rows)
        if batched is None:
            break
        same = all(np.array_equal(batched[i], solo[i]) for i in range(rows))
        undo(range(rows))
        if not same:
            break
        exact = rows
    return exact
