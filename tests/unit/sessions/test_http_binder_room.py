"""The HTTP API's binder keeps at most MAX_SESSIONS sessions: opening one more closes the least
recently used idle one, never one that serves a request."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fake_engine import fake_spec
from session_harness import Harness

import modeld.http._binding as binding_module
from modeld.http._binding import SessionBinder
from modeldconn._errors import SessionNotFound

SPEC = fake_spec()


async def test_idle_sessions_beyond_the_bound_are_closed_oldest_first(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(binding_module, "MAX_SESSIONS", 3)
    h = make_harness(max_live=8)
    binder = SessionBinder(h.manager)
    binder.start()
    handles = []
    for _ in range(3):
        bound = await binder.acquire(SPEC, [], None)
        handles.append(bound.handle)
        binder.release(bound)
    assert h.manager.session_count() == 3
    # a named conversation needs a fourth: the least recently used idle one is closed for it
    again = await binder.acquire(SPEC, [], "conversation")
    assert h.manager.session_count() == 3 and binder.closed_for_room == 1
    with pytest.raises(SessionNotFound):
        h.manager.get(handles[0])
    binder.release(again)
    named = await binder.acquire(SPEC, [], "conversation")
    assert named.handle == again.handle
    binder.release(named)
    fourth = await binder.acquire(SPEC, [], None)
    binder.release(fourth)
    assert h.manager.session_count() == 3 and binder.closed_for_room == 2
    # sessions serving requests are never closed for room
    held = [await binder.acquire(SPEC, [], None) for _ in range(4)]
    assert len({b.handle for b in held}) == 4
    assert all(h.manager.get(b.handle) is not None for b in held)
    for bound in held:
        binder.release(bound)
    binder.stop()
