"""Session control: who may see a session, and ListSessions, ExplainSession, EvictSession,
PinSession and ForkSession over the session table.

Who sees what. A caller that names a client (the ``x-modeld-client`` Attach id) sees and
controls only the sessions opened with that id; another client's session is
:class:`PermissionDenied` (metadata ``handle``). A caller that names none is the operator,
already admitted by the socket's permissions or the auth token, and sees every session. This is
scoping between well-behaved clients of one daemon, not a security boundary inside it: any
caller the daemon admits may leave the header out.

Costs. Listing reads each session's fields on the loop (no engine-thread job, so a long prefill
never delays it) and its tape hash from a per-tape-version cache (``_reuse_log``); a tape the
engine thread is appending to is read as it is at that instant. Evict and Fork hold the session
for one operation (a busy session is ``session_busy``, as for any verb), and do their KV work on
the engine thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping

from modeld.engine._scheduler import EngineScheduler
from modeld.models._facts import ModelSpec
from modeld.sessions._admission import Admission
from modeld.sessions._prefill import exact_keep
from modeld.sessions._residency import Residency
from modeld.sessions._reuse_log import TurnRecord
from modeld.sessions._session import Session
from modeld.sessions._table import SessionTable
from modeld.sessions._types import ResolvedConfig
from modeldconn._errors import InvalidArgument, PermissionDenied
from modeldconn._types import SessionListing

__all__ = ["EVICT_TIERS", "SessionControl", "SessionView"]

#: where EvictSession may put a session's KV
EVICT_TIERS = ("ram", "disk", "drop")

#: opens a session: (model, n_ctx, owner, kv cache type) -> (session, resolved config);
#: ``SessionManager.open``
Opener = Callable[[ModelSpec, int, str, str], Awaitable[tuple[Session, ResolvedConfig]]]


#: one session as ListSessions reports it: the client's own type (the fields of
#: ``SessionInfo`` on the wire), so the two sides cannot drift. ``kv_bytes`` of a live session is
#: its context's reservation (n_ctx x KV bytes per token); of a parked one, its state's size.
SessionView = SessionListing


class SessionControl:
    """:param client_names: Attach id -> the client's name, as the clients attached (read when
    listing). :param open_session: ``SessionManager.open`` (ForkSession opens through it, so
    admission, memory checks and owners are the same as OpenSession's). :param close: frees a
    session (a failed fork's)."""

    def __init__(
        self,
        *,
        table: SessionTable,
        admission: Admission,
        scheduler: EngineScheduler,
        residency: Residency,
        client_names: Mapping[str, str],
        open_session: Opener,
        close: Callable[[Session], object],
    ) -> None:
        self._table = table
        self._admission = admission
        self._scheduler = scheduler
        self._residency = residency
        self._client_names = client_names
        self._open = open_session
        self._close = close

    # -- who sees what --------------------------------------------------------------------------

    def visible(self, handle: str, caller: str) -> Session:
        """The session of ``handle`` if ``caller`` may see it ("" = the operator: any).

        :raises SessionNotFound: not a handle, unknown or closed.
        :raises StaleFence: a handle of another daemon instance.
        :raises PermissionDenied: another client's session (metadata ``handle``)."""
        session = self._table.get(handle)
        if caller and session.owner != caller:
            raise PermissionDenied(f"session {session.id} belongs to another client", handle=handle)
        return session

    # -- ListSessions / ExplainSession ----------------------------------------------------------

    def view(self, session: Session, now: float | None = None) -> SessionView:
        """``session`` as listed, read on the loop without an engine-thread job."""
        now = time.monotonic() if now is None else now
        engine, parked, tape = session.engine, session.parked, session.tape
        if engine is not None:
            residency, kv_bytes = "live", session.kv_bytes
        elif parked is not None:
            residency = "ram" if parked.state is not None else "disk"
            kv_bytes = parked.size
        else:
            residency, kv_bytes = ("dropped" if tape else "none"), 0
        spec = session.model.spec
        pin_remaining = max(0.0, session.pinned_until - now)
        busy = session.busy
        return SessionView(
            handle=session.handle,
            model=spec.alias.name if spec.alias is not None else spec.facts.name,
            model_digest=spec.facts.digest,
            client_id=session.owner,
            client_name=self._client_names.get(session.owner, ""),
            tape_tokens=len(tape),
            residency=residency,
            kv_bytes=kv_bytes,
            idle_s=0.0 if busy else max(0.0, now - session.last_used),
            pinned=pin_remaining > 0,
            pin_remaining_s=pin_remaining,
            prefix_hash=session.reuse.tape_hash(tape),
            n_ctx=session.n_ctx,
            kv_cache_type=session.kv_cache_type or "f16",
            busy=busy,
        )

    def listing(self, caller: str) -> list[SessionView]:
        """Every session ``caller`` may see, in the order they were opened."""
        now = time.monotonic()
        return [self.view(s, now) for s in self._table if not caller or s.owner == caller]

    def explain(
        self, handle: str, caller: str, last_turns: int = 0
    ) -> tuple[SessionView, list[TurnRecord]]:
        """The session and its last ``last_turns`` turns' reuse (0: all kept), oldest first.

        :raises SessionNotFound / StaleFence / PermissionDenied: see :meth:`visible`."""
        session = self.visible(handle, caller)
        return self.view(session), session.reuse.last(last_turns)

    # -- EvictSession / PinSession --------------------------------------------------------------

    async def evict(self, handle: str, caller: str, to: str) -> SessionView:
        """Park the session's KV in ``to`` ("ram" | "disk") now, or "drop" it (the tape stays;
        the next turn recomputes it). Its idle time is left as it was.

        :raises InvalidArgument: ``to`` is none of those (field ``to``).
        :raises SessionBusy: an operation runs on it.
        :raises ParkingFull: the tier cannot take it (RAM full: ``why`` ram_budget; disk
            parking off or full, or the disk's reserve: disk_budget / disk_reserve /
            disk_error); the session stays where it was.
        :raises SessionNotFound / StaleFence / PermissionDenied: see :meth:`visible`."""
        if to not in EVICT_TIERS:
            raise InvalidArgument(
                f"to must be one of {', '.join(EVICT_TIERS)}, not {to!r}", field="to"
            )
        self.visible(handle, caller)
        async with self._admission.operation(handle) as session:
            idle_since = session.last_used
            await self._scheduler.call(self._evict, session, to)
        session.last_used = idle_since  # an eviction is not a use
        return self.view(session)

    def _evict(self, session: Session, to: str) -> None:
        """Engine thread."""
        lot = self._residency.lot
        if to == "drop":
            self._residency.drop(session)
        elif session.engine is not None:
            lot.park(session, tier=to)
        elif session.parked is not None:
            lot.move(session, to)
        # else dropped already: there is no KV to put anywhere

    def pin(self, handle: str, caller: str, ttl_s: float) -> SessionView:
        """Exempt the session from idle parking and idle closing for ``ttl_s`` seconds from
        now (0 unpins; a new pin replaces the old one).

        :raises InvalidArgument: ``ttl_s`` negative or not finite (field ``ttl_s``).
        :raises SessionNotFound / StaleFence / PermissionDenied: see :meth:`visible`."""
        if not math.isfinite(ttl_s) or ttl_s < 0:
            raise InvalidArgument(
                f"ttl_s must be a finite number of seconds >= 0, not {ttl_s}", field="ttl_s"
            )
        session = self.visible(handle, caller)
        session.pinned_until = time.monotonic() + ttl_s if ttl_s else 0.0
        return self.view(session)

    # -- ForkSession ----------------------------------------------------------------------------

    async def fork(
        self,
        handle: str,
        caller: str,
        at_tokens: int | None,
        n_ctx: int = 0,
        exact_prefix: bool | None = None,
        kv_cache_type: str = "",
    ) -> tuple[Session, ResolvedConfig]:
        """A new session of ``caller`` (the operator's: no owner) on the source's model, whose
        tape is the source's first ``at_tokens`` tokens (None: all), its KV copied from the
        source's (as far as the source has it computed; with ``exact_prefix`` only what a cold
        run computes identically, so the rest is recomputed in aligned chunks). The source is
        held for the copy and left as it was. ``n_ctx`` 0, ``exact_prefix`` None and
        ``kv_cache_type`` "": the source's. KV of another cache type cannot be copied: a fork
        of another type computes its tape on first use instead.

        :raises InvalidArgument: ``at_tokens`` past the source's tape (field ``at_tokens``);
            ``n_ctx`` smaller than the tape it would hold (field ``n_ctx``).
        :raises SessionBusy: an operation runs on the source.
        :raises InsufficientMemory / Overloaded / UnknownClient / UnsupportedFeature: as
            OpenSession (an unknown ``kv_cache_type`` is invalid_argument naming it).
        :raises SessionNotFound / StaleFence / PermissionDenied: see :meth:`visible`."""
        self.visible(handle, caller)
        async with self._admission.operation(handle) as source:
            idle_since = source.last_used
            tape = len(source.tape)
            at = tape if at_tokens is None else at_tokens
            if at > tape:
                raise InvalidArgument(
                    f"at_tokens {at} is past the source's tape of {tape} tokens",
                    field="at_tokens",
                    tape_tokens=tape,
                )
            wanted = n_ctx or source.n_ctx
            if wanted < at:
                raise InvalidArgument(
                    f"n_ctx {wanted} is smaller than the {at} tokens the fork holds",
                    field="n_ctx",
                )
            kv_type = kv_cache_type or source.kv_cache_type
            session, resolved = await self._open(source.model.spec, wanted, caller, kv_type)
            session.exact_prefix = source.exact_prefix if exact_prefix is None else exact_prefix
            try:
                await self._admission.waiting_for_room(
                    lambda: self._scheduler.call(self._copy, source, session, at)
                )
            except BaseException:
                self._close(session)
                raise
        source.last_used = idle_since  # being forked is not a use
        return session, resolved

    def _copy(self, source: Session, target: Session, at: int) -> None:
        """Engine thread: ``target`` (new, empty) takes the source's first ``at`` tape tokens
        and as much of their KV as the source holds and ``target`` may keep."""
        engine = self._residency.live(target)
        keep = min(at, self._residency.resident_len(source))
        if target.kv_cache_type != source.kv_cache_type:
            keep = 0  # another layout: nothing to copy
        if target.exact_prefix:  # only whole chunks the source computed as a cold run does
            keep = exact_keep(source.aligned, keep, at)
        if keep:
            donor = source.engine if source.engine is not None else None
            if not engine.adopt_prefix(donor or self._residency.state_of(source), keep):
                keep = 0  # the engine could not copy: the fork computes its tape on first use
        target.tape = source.tape[:at]
        target.aligned = exact_keep(source.aligned, keep, keep) if keep else 0
        target.prefix_len = min(source.prefix_len, at)
        target.model.index.update(target.id, target.tape)
        target.reuse.record("fork", reused=keep, shared=keep)
