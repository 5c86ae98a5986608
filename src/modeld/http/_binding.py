"""Which session serves an HTTP request, and what a prompt had in common with the cache.

Clients of the OpenAI-style APIs resend the whole conversation every turn and name no session.
The binder keeps each conversation on a session of its own, so a turn computes only what is new:

1. ``x-session-id`` (a name the client chooses) or OpenAI's ``prompt_cache_key``: the session
   last used under that name (a new one the first time);
2. otherwise the HTTP session whose last prompt the new prompt continues, found through the
   session layer's prefix index (O(prompt), however many sessions are open): the one sharing
   the longest prefix, as long as that covers the whole prompt it was last given. A prompt that
   only shares part of a session's conversation (a second conversation with the same system
   prompt, an edited history) does not take that session over: it gets a new one.

A session serves one request at a time. A request whose session is in use (a concurrent turn
of the same conversation) gets a new session, and EnsurePrefix on a new session starts it from
the KV of whichever session holds the longest prefix (a copy, not a recomputation: see
``sessions._prefill``). HTTP sessions belong to the client identity :data:`HTTP_CLIENT`; they are
parked and closed by the daemon's idle budgets like every other session, and a name whose
session was closed starts again on a new one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from modeld.models._facts import ModelSpec
from modeld.sessions._manager import CachedPrefix, SessionManager
from modeld.sessions._models import LoadedModel
from modeld.sessions._prefix_index import BLOCK
from modeldconn._errors import SessionNotFound, StaleFence

__all__ = ["HTTP_CLIENT", "Binding", "Divergence", "SessionBinder"]

log = logging.getLogger("modeld.http")

#: the client identity HTTP sessions belong to (``Session.owner``)
HTTP_CLIENT = "http"
#: tokens of text shown on each side of a divergence
WINDOW_TOKENS = 12
#: names kept for x-session-id / prompt_cache_key; the oldest is forgotten beyond it
MAX_NAMES = 4096
#: HTTP sessions kept open at most: opening one more first closes the least recently used
#: idle one. Without a bound, requests that bind to nothing (prompts shorter than one index
#: block, or new conversations) would each leave a session behind until the idle close
#: (a day by default), parked to RAM and disk.
MAX_SESSIONS = 64


@dataclass(frozen=True)
class Divergence:
    """Where a prompt left the longest prefix any open session holds."""

    position: int  #: the first token of the prompt that differs from that session's tape
    before: str  #: the prompt's text just before it (up to WINDOW_TOKENS tokens)
    after: str  #: the prompt's text from it on (up to WINDOW_TOKENS tokens)
    cached_tokens: int  #: the length of the tape it diverged from

    @property
    def window(self) -> str:
        return self.before + self.after


@dataclass(frozen=True)
class Binding:
    """The session a request runs on. ``how``: ``x-session-id`` | ``prompt_cache_key`` (the
    name's session) | ``prefix`` (the session its prompt continues) | ``new``."""

    handle: str
    how: str
    name: str | None = None


class SessionBinder:
    """Event loop only. :param exact_prefix: what new sessions get (the daemon's default)."""

    def __init__(
        self,
        sessions: SessionManager,
        *,
        exact_prefix: bool = False,
        owner: str = HTTP_CLIENT,
    ) -> None:
        self._sessions = sessions
        self._exact_prefix = exact_prefix
        self._owner = owner
        self._names: dict[str, str] = {}  #: name → handle, oldest use first
        self._in_use: set[str] = set()
        #: the HTTP sessions this binder opened, least recently used first
        self._opened: dict[str, None] = {}
        self.closed_for_room = 0  #: sessions closed to stay within MAX_SESSIONS

    def start(self) -> None:
        """Give HTTP sessions their client identity (its end closes them: :meth:`stop`)."""
        self._sessions.attach(self._owner)

    def stop(self) -> None:
        self._names.clear()
        self._sessions.detach(self._owner)

    @property
    def owner(self) -> str:
        return self._owner

    def _open_handle(self, handle: str) -> bool:
        try:
            self._sessions.get(handle)
        except (SessionNotFound, StaleFence):
            return False
        return True

    async def acquire(
        self,
        spec: ModelSpec,
        cached: list[CachedPrefix],
        name: str | None,
        how_named: str = "x-session-id",
    ) -> Binding:
        """A session for one request, in use until :meth:`release`.

        ``cached``: what :meth:`SessionManager.cached` found for the request's prompt.

        :raises InsufficientMemory / ModelLoadFailed / Overloaded: a new session could not be
            opened."""
        if name is not None:
            handle = self._names.get(name)
            if handle is not None and handle not in self._in_use and self._open_handle(handle):
                self._in_use.add(handle)
                return Binding(handle, how_named, name)
            return Binding(await self._open(spec), "new", name)
        for candidate in cached:
            if (
                candidate.owner == self._owner
                and candidate.handle not in self._in_use
                and not candidate.busy
                and candidate.common >= max(candidate.prefix_tokens, BLOCK)
            ):
                self._in_use.add(candidate.handle)
                self._used(candidate.handle)
                return Binding(candidate.handle, "prefix")
        return Binding(await self._open(spec), "new")

    async def _open(self, spec: ModelSpec) -> str:
        await self._make_room()
        session, _ = await self._sessions.open(spec, 0, self._owner)
        session.exact_prefix = self._exact_prefix  # before its first operation
        self._in_use.add(session.handle)
        self._used(session.handle)
        return session.handle

    def _used(self, handle: str) -> None:
        self._opened.pop(handle, None)
        self._opened[handle] = None

    async def _make_room(self) -> None:
        """Close least recently used idle HTTP sessions until one more fits MAX_SESSIONS."""
        for gone in [h for h in self._opened if not self._open_handle(h)]:
            del self._opened[gone]  # closed meanwhile (idle close, a client's CloseSession)
        while len(self._opened) >= MAX_SESSIONS:
            victim = next((h for h in self._opened if h not in self._in_use), None)
            if victim is None:
                return  # every one serves a request now: the session pool's limits decide
            del self._opened[victim]
            await self._sessions.close(victim)
            self.closed_for_room += 1

    def release(self, binding: Binding) -> None:
        """The request is over: its session may serve the next one; its name now means it (the
        session that served the conversation's latest turn)."""
        self._in_use.discard(binding.handle)
        if binding.handle in self._opened:
            self._used(binding.handle)
        if binding.name is not None and self._open_handle(binding.handle):
            self._names.pop(binding.name, None)
            self._names[binding.name] = binding.handle
            while len(self._names) > MAX_NAMES:
                del self._names[next(iter(self._names))]

    async def divergence(
        self, model: LoadedModel, tokens: list[int], cached: list[CachedPrefix]
    ) -> Divergence | None:
        """Where ``tokens`` left the longest cached prefix, when a tape went on differently
        there (None: nothing cached, or the prompt extends a tape, or a tape extends it)."""
        if not cached:
            return None
        best = cached[0]  # longest first
        if best.common >= len(tokens) or best.common >= best.tape_tokens:
            return None
        at = best.common
        before = await self._sessions.detokenize(model, tokens[max(0, at - WINDOW_TOKENS) : at])
        after = await self._sessions.detokenize(model, tokens[at : at + WINDOW_TOKENS])
        return Divergence(at, before, after, best.tape_tokens)

    # -- named sessions for other front ends (the OpenAI Responses router, ``_responses``): --
    # -- a name per stored response, moved along as its session goes on to the next one ----

    def knows(self, name: str) -> bool:
        """Whether ``name`` still means an open session."""
        handle = self._names.get(name)
        return handle is not None and self._open_handle(handle)

    def rename(self, old: str | None, new: str, handle: str) -> None:
        """``handle`` now ends at what ``new`` names: ``old`` (the turn it continued) no longer
        means it, as its tape went on past that point."""
        if old is not None and self._names.get(old) == handle:
            del self._names[old]
        if self._open_handle(handle):
            self._names.pop(new, None)
            self._names[new] = handle
            while len(self._names) > MAX_NAMES:
                del self._names[next(iter(self._names))]

    def forget(self, name: str) -> None:
        """``name`` no longer means a session (the session itself stays open)."""
        self._names.pop(name, None)

    async def restore(self, spec: ModelSpec, snapshot_id: str, name: str) -> str:
        """A new HTTP session from a snapshot, named ``name`` (not in use: the next
        :meth:`acquire` of ``name`` takes it).

        :raises SnapshotNotFound / SnapshotMismatch: evicted, corrupt, or another model's.
        :raises InsufficientMemory / Overloaded: no room for it."""
        await self._make_room()
        session, _ = await self._sessions.restore(spec, snapshot_id, 0, self._owner)
        session.exact_prefix = self._exact_prefix
        self._used(session.handle)
        self.rename(None, name, session.handle)
        return session.handle
