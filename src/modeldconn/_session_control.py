"""Session control on the client side: what ListSessions / ExplainSession / EvictSession /
PinSession report, and the :class:`Call` of each (ForkSession's too).

Who sees what (the daemon decides): a call that names this client (its Attach id, sent as
``x-modeld-client``) sees and controls only the sessions this client opened; another client's
session is :class:`PermissionDenied`. A call that names no client is the operator's and sees
every session. ``operator=True`` on the client methods sends no client id.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ._convert import _by_name, session_info_from_pb
from ._errors import InvalidArgument
from ._pb import modeld_pb2 as pb
from ._requests import Call, instance_of
from ._types import SessionInfo

__all__ = [
    "EVICT_TIERS",
    "SessionExplanation",
    "SessionListing",
    "TurnReuse",
    "evict_session",
    "explain_session",
    "fork_session",
    "list_sessions",
    "pin_session",
]

#: where ``evict_session`` may put a session's KV ("drop": free it, keep the tape)
EVICT_TIERS = ("ram", "disk", "drop")


@dataclass(frozen=True)
class SessionListing:
    """One session as the daemon lists it.

    ``residency``: "live" | "ram" | "disk" (where its KV is) | "dropped" (freed by
    ``evict_session(..., "drop")``; the tape stays and the next turn recomputes it) | "none";
    ``kv_bytes``: bytes its KV takes there; ``idle_s``: seconds since its last operation ended;
    ``pin_remaining_s``: seconds its pin lasts (0: unpinned); ``prefix_hash``: sha256 hex of
    its tape's token ids (equal tapes, equal hash; EnsurePrefix's ``prefix_hash`` for the same
    tokens); ``client_id`` / ``client_name``: who opened it ("" for none)."""

    handle: str
    model: str
    model_digest: str
    client_id: str
    client_name: str
    tape_tokens: int
    residency: str
    kv_bytes: int
    idle_s: float
    pinned: bool
    pin_remaining_s: float
    prefix_hash: str
    n_ctx: int
    kv_cache_type: str
    busy: bool


@dataclass(frozen=True)
class TurnReuse:
    """One turn of a session's reuse history, in tokens.

    ``operation``: "ensure_prefix" | "prefill_suffix" | "decode" | "fork" | "restore";
    ``reused``: KV kept (of which ``shared`` was copied from another session); ``prefilled``:
    computed; ``dropped``: truncated; ``generated``: decoded; ``restored_from``: "ram" |
    "disk" when the turn first restored the session's parked KV."""

    operation: str
    at_unix_s: float
    reused: int
    prefilled: int
    dropped: int
    generated: int
    shared: int
    restored_from: str


@dataclass(frozen=True)
class SessionExplanation:
    session: SessionListing
    turns: tuple[TurnReuse, ...]  #: oldest first (the daemon keeps the last 32)


_LISTING_FIELDS = tuple(f.name for f in fields(SessionListing))


def _listing(message: pb.SessionInfo) -> SessionListing:
    # every field is a scalar: read them by name directly (``_by_name`` checks each for a
    # repeated value, which doubled the client's share of a 1,000-session listing)
    return SessionListing(**{name: getattr(message, name) for name in _LISTING_FIELDS})


def _explanation(reply: pb.ExplainSessionResponse) -> SessionExplanation:
    return SessionExplanation(
        _listing(reply.session), tuple(_by_name(t, TurnReuse) for t in reply.turns)
    )


# ``named``: the call carries this client's Attach id (it sees only its own sessions); False:
# the operator's call (every session).


def list_sessions(named: bool) -> Call[list[SessionListing]]:
    return Call(
        "ListSessions",
        pb.ListSessionsRequest(),
        lambda r: [_listing(s) for s in r.sessions],
        attach=named,
    )


def explain_session(handle: str, last_turns: int, named: bool) -> Call[SessionExplanation]:
    if last_turns < 0:
        raise InvalidArgument(f"last_turns must be >= 0, not {last_turns}", field="last_turns")
    request = pb.ExplainSessionRequest(handle=handle, last_turns=last_turns)
    return Call("ExplainSession", request, _explanation, instance=instance_of(handle), attach=named)


def evict_session(handle: str, to: str, named: bool) -> Call[SessionListing]:
    if to not in EVICT_TIERS:
        raise InvalidArgument(f"to must be one of {', '.join(EVICT_TIERS)}, not {to!r}", field="to")
    request = pb.EvictSessionRequest(handle=handle, to=to)
    return Call(
        "EvictSession",
        request,
        lambda r: _listing(r.session),
        instance=instance_of(handle),
        attach=named,
    )


def pin_session(handle: str, ttl_s: float, named: bool) -> Call[SessionListing]:
    request = pb.PinSessionRequest(handle=handle, ttl_s=ttl_s)
    return Call(
        "PinSession",
        request,
        lambda r: _listing(r.session),
        instance=instance_of(handle),
        attach=named,
    )


def fork_session(
    handle: str,
    at_tokens: int | None,
    n_ctx: int,
    exact_prefix: bool | None,
    named: bool,
    kv_cache_type: str = "",
) -> Call[SessionInfo]:
    """The fork belongs to this client when ``named`` (it closes when this client goes, like
    any session it opens), else to nobody. "" / 0 / None: the source's."""
    config = pb.SessionConfig(n_ctx=n_ctx, kv_cache_type=kv_cache_type)
    if exact_prefix is not None:
        config.exact_prefix = exact_prefix
    request = pb.ForkSessionRequest(handle=handle, config=config)
    if at_tokens is not None:
        if at_tokens < 0:
            raise InvalidArgument(f"at_tokens must be >= 0, not {at_tokens}", field="at_tokens")
        request.at_tokens = at_tokens
    return Call(
        "ForkSession",
        request,
        session_info_from_pb,
        instance=instance_of(handle),
        attach=named,
    )
