"""Admission: one operation at a time per session, and waiting for a live context.

An operation holds its session from ``begin`` to ``end`` (see ``_session``); a second one on
the same session waits up to ``BUSY_GRACE_S`` (a Decode its client just cancelled takes a
moment to unwind) and is then refused as ``session_busy``. An operation that needs a live
context while every live session is busy (nothing can be parked) waits for one to end, up to
``ROOM_WAIT_S``, then is refused as ``overloaded``. Loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator
from typing import TypeVar

from modeld.engine._scheduler import TENANT, EngineScheduler
from modeld.sessions._parking import NoRoom
from modeld.sessions._session import Session
from modeld.sessions._table import SessionTable
from modeldconn._errors import Overloaded, SessionBusy

__all__ = ["BUSY_GRACE_S", "ROOM_WAIT_S", "Admission"]

T = TypeVar("T")

#: how long an operation waits for the session's previous one before session_busy
BUSY_GRACE_S = 0.25
#: how long a call waits for a live context when every live session is busy
ROOM_WAIT_S = 120.0


class Admission:
    """:param free: frees a session closed while its operation ran, once that operation ends.
    :param share: how many sessions of one client may be busy at once (None: no limit); a
        client at its share waits (its session stays idle, so parkable) until one of its
        operations ends: one client's Decodes cannot hold every live context while another
        client waits for one."""

    def __init__(
        self,
        table: SessionTable,
        scheduler: EngineScheduler,
        free: Callable[[Session], None],
        share: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._table = table
        self._scheduler = scheduler
        self._free = free
        self._share = share
        #: notified whenever an operation ends, so calls waiting for a live context retry
        self._room = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def operation(self, handle: str) -> AsyncIterator[Session]:
        """The session of ``handle``, held for one operation.

        :raises SessionNotFound / StaleFence: see ``SessionTable.get``.
        :raises SessionBusy: another operation still holds it after the grace period.
        """
        session = self._table.get(handle)
        deadline = time.monotonic() + BUSY_GRACE_S
        room_deadline = time.monotonic() + ROOM_WAIT_S
        while True:
            if session.busy:
                # A Decode the client just cancelled takes a moment to unwind here; a caller
                # that hung up and called again must not be refused for that. A real overlap
                # still is.
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    await asyncio.wait_for(session.idle.wait(), remaining)
                except TimeoutError:
                    raise SessionBusy(
                        f"session {session.id} is busy with another operation", handle=handle
                    ) from None
            elif self._over_share(session):
                if time.monotonic() > room_deadline:
                    raise Overloaded(
                        "this client's other sessions hold its share of the live contexts; "
                        "retry shortly",
                        retry_after_s=1,
                    )
                async with self._room:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), 0.5)
            else:
                break
            session = self._table.get(handle)  # it may have been closed meanwhile
        session.begin()
        # its engine work is its owner's turn, whatever header the call carried: session calls
        # name no client (modeldconn sends the id on OpenSession only), and without this every
        # client's EnsurePrefix and Decode shared one tenant "" on the engine queue (no turns
        # between clients, no time-sized prefill calls)
        tenant = TENANT.set(session.owner) if session.owner else None
        try:
            yield session
        finally:
            if session.end():
                self._free(session)
            if tenant is not None:
                # a stream closed by the loop's async-generator finalizer ends in another
                # context, where the token does not apply (nor does the value it set)
                with contextlib.suppress(ValueError):
                    TENANT.reset(tenant)
            async with self._room:
                self._room.notify_all()

    def _over_share(self, session: Session) -> bool:
        share = self._share()
        if share is None:
            return False
        mine = sum(1 for s in self._table if s.busy and s.owner == session.owner)
        return mine >= share

    async def waiting_for_room(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt``; while every live session is busy (nothing can be parked), wait for
        one to finish and try again, up to ROOM_WAIT_S, then answer overloaded."""
        deadline = time.monotonic() + ROOM_WAIT_S
        while True:
            try:
                return await attempt()
            except NoRoom:
                if time.monotonic() > deadline:
                    raise
            async with self._room:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 0.5)

    async def streaming(
        self, steps: Callable[[], Generator[T, None, None]]
    ) -> AsyncGenerator[T, None]:
        """Stream ``steps()`` on the engine thread; while its first step finds every live
        session busy (NoRoom, before any work), wait for one to finish and start it again, up to
        ROOM_WAIT_S, then answer overloaded."""
        deadline = time.monotonic() + ROOM_WAIT_S
        while True:
            stream = self._scheduler.stream(steps())
            try:
                first = await stream.__anext__()
            except NoRoom:
                await stream.aclose()
                if time.monotonic() > deadline:
                    raise
                async with self._room:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), 0.5)
                continue
            except StopAsyncIteration:
                return
            except BaseException:
                await stream.aclose()
                raise
            break
        async with contextlib.aclosing(stream):
            yield first
            async for item in stream:
                yield item

    async def in_turns(self, steps: Generator[T | None, None, None]) -> T:
        """Run an engine generator that yields None between prefill chunks, then its result;
        other sessions' work goes in between the chunks."""
        result: T | None = None
        async with contextlib.aclosing(self._scheduler.stream(steps)) as stream:
            async for item in stream:
                if item is not None:
                    result = item
        assert result is not None
        return result
