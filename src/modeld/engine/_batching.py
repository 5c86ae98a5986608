"""Decode steps of several sessions computed as one engine call, where the backend batches.

A decoding session samples a token, streams it, and must compute it before it can sample the
next. It computes it lazily, at the start of its next turn on the worker; when the backend
batches, that same call also computes the sampled-but-not-yet-computed token of every other
session decoding on the model. The worker's FIFO turns make this a round: N sessions decoding
at once cost one N-row engine call per round instead of N one-row calls, and nobody waits longer
than they already did for their turn. The ones whose token was computed by another's call find
it resident and sample at once.

Which tokens are pending is read from the sessions themselves (a decoding session whose tape is
one token ahead of its resident KV), never kept in a list of its own: a session that is parked,
closed or cancelled simply no longer qualifies, and computing the last token of a tape is always
valid, whoever does it. If the batched call fails, every session involved keeps its token on the
tape, uncomputed, and computes it on its own turn: one session's error never becomes another's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from modeld.backends._base import EngineSession

__all__ = ["Decoding", "feeds_for"]


class Decoding(Protocol):
    engine: EngineSession | None
    tape: list[int]

    @property
    def decoding(self) -> bool: ...


def _pending(session: Decoding) -> EngineSession | None:
    engine = session.engine
    if session.decoding and engine is not None and engine.kv_len == len(session.tape) - 1:
        return engine
    return None


def feeds_for(
    turn: Decoding, others: Iterable[Decoding], max_rows: int
) -> list[tuple[EngineSession, int]]:
    """``turn``'s pending token first, then up to ``max_rows - 1`` pending ones of other
    sessions in its batch group."""
    assert turn.engine is not None
    group = turn.engine.batch_group
    feeds = [(turn.engine, turn.tape[-1])]
    for other in others:
        if len(feeds) >= max_rows:
            break
        engine = _pending(other) if other is not turn else None
        if engine is not None and engine.batch_group is group:
            feeds.append((engine, other.tape[-1]))
    return feeds
