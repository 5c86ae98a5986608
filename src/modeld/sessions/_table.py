"""The table of open sessions: handle lookup, fencing, and a copy-on-write view for readers.

The loop is the only writer (open and close happen there). Every write replaces the mapping
with a new one instead of changing it, so a reader on another thread (the engine thread looking
for batch peers or parking victims, the metrics thread counting) iterates a consistent,
immutable snapshot: ``dictionary changed size during iteration`` cannot happen.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from modeld.sessions._session import Session
from modeldconn._errors import SessionNotFound, StaleFence

__all__ = ["SessionTable"]

_REMEMBER_CLOSED = 10_000


class SessionTable:
    def __init__(self, instance_id: str) -> None:
        self._instance_id = instance_id
        self._by_id: Mapping[str, Session] = MappingProxyType({})
        #: recently closed ids, so a late call says "closed", not "unknown" (loop only)
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()

    def handle_for(self, session_id: str) -> str:
        return f"{self._instance_id}/{session_id}"

    def snapshot(self) -> Mapping[str, Session]:
        """An immutable view of the table as it is now; safe to iterate from any thread."""
        return self._by_id

    def __iter__(self) -> Iterator[Session]:
        return iter(tuple(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, session: Session) -> None:
        """Loop only."""
        self._by_id = MappingProxyType({**self._by_id, session.id: session})

    def remove(self, session: Session) -> bool:
        """Loop only. False when it was not in the table (closed already)."""
        if session.id not in self._by_id:
            return False
        self._by_id = MappingProxyType({k: v for k, v in self._by_id.items() if k != session.id})
        self._closed[session.id] = None
        while len(self._closed) > _REMEMBER_CLOSED:
            self._closed.popitem(last=False)
        return True

    def get(self, handle: str) -> Session:
        """:raises SessionNotFound: not a handle, or unknown or closed.
        :raises StaleFence: the handle belongs to another daemon instance."""
        instance, _, session_id = handle.rpartition("/")
        if not instance or not session_id:
            raise SessionNotFound(f"{handle!r} is not a session handle", handle=handle)
        if instance != self._instance_id:
            raise StaleFence(
                f"the handle belongs to instance {instance}; this is {self._instance_id}",
                served_by=self._instance_id,
                requested=instance,
            )
        session = self._by_id.get(session_id)
        if session is None:
            state = "closed" if session_id in self._closed else "unknown"
            raise SessionNotFound(f"session {session_id} is {state}", handle=handle, state=state)
        return session
