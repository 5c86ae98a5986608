"""Prompts being computed now, so that one computed twice at once is computed once.

Clients that start together from one long prefix (agents forked from the same briefing, a
batch of requests on one system prompt) each send an EnsurePrefix before any of them has the
prefix resident: the prefix index has nothing to offer yet, and the engine would compute the
same tokens once per client, in interleaved chunks. Instead, an EnsurePrefix whose prompt
shares a long prefix with one being computed now waits (on the event loop, holding no engine
time) until that one is done, and then copies its KV (``Prefill``'s donor path), computing
only its own tail.

A session waits for a twin only when the twin offers at least ``MIN_SHARED_TOKENS`` more than
the session's own tape, has the same ``exact_prefix`` setting (an exact session adopts only an
exact donor), and has a tail of its own no longer than the part they share (else waiting would
cost more than computing). Waiting sessions are not in flight themselves, so waits never form
a cycle. Loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from modeld.sessions._models import LoadedModel
from modeld.sessions._prefill import MIN_SHARED_TOKENS
from modeld.sessions._prefix_index import common_prefix
from modeld.sessions._session import Session

__all__ = ["InFlightPrefixes"]


@dataclass
class _Flight:
    model: LoadedModel
    tokens: list[int]
    exact: bool
    kv_cache_type: str  #: a twin of another KV cache type cannot donate its KV
    done: asyncio.Event = field(default_factory=asyncio.Event)


class InFlightPrefixes:
    def __init__(self) -> None:
        self._flights: dict[str, _Flight] = {}
        self.waits = 0  #: EnsurePrefix calls that waited for a twin

    def twin(self, session: Session, tokens: list[int]) -> _Flight | None:
        """The prompt in flight worth waiting for, if any (the one sharing most)."""
        own = common_prefix(session.tape, tokens)
        best: _Flight | None = None
        best_common = own + MIN_SHARED_TOKENS - 1
        for holder, flight in self._flights.items():
            if holder == session.id or flight.model is not session.model:
                continue
            if flight.exact != session.exact_prefix:
                continue
            if flight.kv_cache_type != session.kv_cache_type:
                continue
            common = common_prefix(flight.tokens, tokens)
            if common > best_common and len(flight.tokens) - common <= common:
                best, best_common = flight, common
        return best

    async def wait_for_twins(self, session: Session, tokens: list[int]) -> None:
        """Until no prompt in flight is worth waiting for (each one waited for is then done,
        its KV resident and indexed for ``session`` to copy)."""
        waited = False
        while (flight := self.twin(session, tokens)) is not None:
            waited = True
            await flight.done.wait()
        self.waits += waited

    @contextlib.contextmanager
    def computing(self, session: Session, tokens: list[int]) -> Iterator[None]:
        """``session`` computes ``tokens`` (its EnsurePrefix runs) for the duration."""
        flight = _Flight(session.model, tokens, session.exact_prefix, session.kv_cache_type)
        self._flights[session.id] = flight
        try:
            yield
        finally:
            del self._flights[session.id]
            flight.done.set()
