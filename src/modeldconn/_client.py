"""What the client twins share, free of I/O: which daemon to dial, metadata, retries, options.

``Client`` (``_sync``) and ``AsyncClient`` (``_async``) build every request with ``_requests``
and read every reply with ``_convert``; they differ only in how they wait. One channel is kept
per (endpoint, instance id) and replaced when the lease names another leader.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from ._dataroot import resolve_data_root
from ._errors import (
    DaemonNotRunning,
    InvalidArgument,
    LeaseStale,
    NotReady,
    Overloaded,
    RemoteError,
    StaleFence,
    Unavailable,
    UnknownClient,
    UnsupportedProtocol,
    error_from_rpc,
)
from ._probe import probe
from ._requests import Call
from ._tls import find_tls_ca, open_channel
from ._types import (
    Completion,
    DecodeChunk,
    DecodeFinal,
    DecodeOptions,
    SessionInfo,
    TokenLogprob,
    ToolCall,
)
from ._wire import (
    AUTH_METADATA_KEY,
    CLIENT_METADATA_KEY,
    INSTANCE_METADATA_KEY,
    MIN_PROTOCOL,
    PROTOCOL,
    PROTOCOL_METADATA_KEY,
    find_auth_token,
)

__all__ = ["ClientBase", "Collector", "Retry", "SessionBase", "TapeClaim", "decode_options"]

_OPTION_NAMES = frozenset(spec.name for spec in fields(DecodeOptions))


def decode_options(options: DecodeOptions | None, overrides: Mapping[str, object]) -> DecodeOptions:
    """``options`` (default: all defaults) with the fields named in ``overrides`` replaced.

    :raises TypeError: naming a keyword that is no field of :class:`DecodeOptions`."""
    base = DecodeOptions() if options is None else options
    if not overrides:
        return base
    unknown = sorted(set(overrides) - _OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown decode option(s): {', '.join(unknown)}")
    return replace(base, **overrides)  # type: ignore[arg-type]


class ClientBase:
    """Which daemon to dial and how to talk to it; no I/O but reading the lease."""

    def __init__(
        self,
        *,
        data_root: str | os.PathLike[str] | None,
        timeout_s: float | None,
        wait_ready_s: float,
        auth_token: str | None,
        tls_ca: str | os.PathLike[str] | None,
        endpoint: str | None,
        tls: bool,
    ) -> None:
        self._data_root = resolve_data_root(data_root)
        self._tls_ca = tls_ca
        #: dial this HOST:PORT (or unix:PATH) directly instead of the leader the lease names
        self._endpoint = endpoint
        #: endpoints that speak TLS: the lease says so, or the caller did for ``endpoint``
        self._tls_endpoints: set[str] = {endpoint} if endpoint and tls else set()
        self._auth = (
            ((AUTH_METADATA_KEY, f"Bearer {token}"),)
            if (token := find_auth_token(self._data_root, auth_token))
            else ()
        )
        self._timeout_s = timeout_s
        self._wait_ready_s = wait_ready_s
        self._lock = threading.Lock()
        self._target: tuple[str, str] | None = None  # (endpoint, instance id)
        #: per daemon instance: our Attach id and the open stream that keeps it alive
        self._attached: dict[tuple[str, str], tuple[str, Any]] = {}

    def _leader(self, refresh: bool = False) -> tuple[str, str]:
        if self._endpoint:
            # no lease to name the instance: calls go unfenced (a session's handle still
            # names its instance, and the daemon checks that)
            return (self._endpoint, "")
        with self._lock:
            if self._target is None or refresh:
                result = probe(data_root=self._data_root).raise_for_state()
                assert result.lease is not None
                if result.lease.protocol < MIN_PROTOCOL:
                    # checked before dialling: this build cannot speak to that daemon
                    raise UnsupportedProtocol(
                        f"the daemon speaks protocol {result.lease.protocol}; this modeldconn "
                        f"speaks {MIN_PROTOCOL}..{PROTOCOL}",
                        protocol=result.lease.protocol,
                        min_protocol=MIN_PROTOCOL,
                        client_protocol=PROTOCOL,
                    )
                self._target = (result.lease.endpoint, result.lease.instance_id)
                if result.lease.tls:
                    self._tls_endpoints.add(result.lease.endpoint)
            return self._target

    def _open_channel(self, endpoint: str, *, aio: bool = False) -> Any:
        tls = endpoint in self._tls_endpoints
        try:
            ca = find_tls_ca(self._data_root, self._tls_ca) if tls else None
        except OSError as exc:
            raise Unavailable(f"cannot read the TLS CA for {endpoint}: {exc}") from None
        return open_channel(endpoint, tls, ca, aio=aio)

    def _metadata(self, instance: str, client_id: str = "") -> tuple[tuple[str, str], ...]:
        # the instance is "" only for a daemon dialled by endpoint (no lease names one): the
        # header is then left out, and the session handles still fence every session call
        return (
            (PROTOCOL_METADATA_KEY, str(PROTOCOL)),
            *(((INSTANCE_METADATA_KEY, instance),) if instance else ()),
            *(((CLIENT_METADATA_KEY, client_id),) if client_id else ()),
            *self._auth,
        )

    def _forget_attach(self, target: tuple[str, str]) -> Any:
        """Drop our Attach id on ``target`` (the daemon no longer knows it); returns its
        stream, for the caller to cancel, or None. (One dict pop: atomic, so it needs neither
        twin's attach lock.)"""
        entry = self._attached.pop(target, None)
        return None if entry is None else entry[1]

    def _call_kwargs(
        self, call: Call[Any], target: tuple[str, str], client_id: str = ""
    ) -> dict[str, Any]:
        """Metadata and deadline for ``call`` sent to ``target``."""
        return {
            "metadata": self._metadata(call.instance or target[1], client_id),
            "timeout": self._timeout_s,
        }


class Retry:
    """What to do after a failed call; no I/O but re-reading the lease.

    * the leader may have changed (no answer, or another instance answered): read the lease
      again and, if it names another daemon, retry once there (calls tied to a session's handle
      are not moved: the session lives on its own instance);
    * the daemon is starting (loading its --model, say): wait up to ``wait_ready_s``;
    * the daemon is overloaded for a moment: retry after its ``retry_after_s``, within the same
      ``wait_ready_s``.
    Anything else is raised as the typed error.
    """

    pause_s = 0.1

    def __init__(self, client: ClientBase, instance_hint: str) -> None:
        self._client = client
        self._instance_hint = instance_hint
        self._redialled = False
        self._reattached = False
        self._ready_by = time.monotonic() + client._wait_ready_s

    def after(self, exc: Exception, target: tuple[str, str]) -> tuple[str, str]:
        """The target to retry on (after ``pause_s``); raises the typed error when done."""
        error = exc if isinstance(exc, RemoteError) else error_from_rpc(exc)
        cause = exc.__cause__ if isinstance(exc, RemoteError) else exc
        try:
            if (
                not self._instance_hint
                and not self._redialled
                and isinstance(error, (Unavailable, StaleFence))
            ):
                fresh = self._client._leader(refresh=True)
                if fresh != target:
                    self._redialled = True
                    self.pause_s = 0.0
                    return fresh
            if (
                isinstance(error, NotReady)
                and not self._instance_hint
                and time.monotonic() < self._ready_by
            ):
                self.pause_s = 0.1
                return self._client._leader(refresh=True)
        except (LeaseStale, DaemonNotRunning):
            # a takeover under way: the old leader is gone and its successor has not written
            # the lease yet (~one standby poll); wait for it as for a starting daemon
            if time.monotonic() >= self._ready_by:
                raise
            self.pause_s = 0.1
            return target
        if isinstance(error, UnknownClient) and not self._reattached:
            # our lifeline ended (the daemon closed its stream) while we still held its id:
            # attach again, once, so the session gets a lifeline rather than none
            self._reattached = True
            self.pause_s = 0.0
            stale = self._client._forget_attach(target)
            if stale is not None:
                stale.cancel()  # sync and asyncio streams alike: cancel() does not block
            return target
        if isinstance(error, Overloaded) and time.monotonic() < self._ready_by:
            # busy for a moment (a full queue, every live session busy): retry when it says
            try:
                self.pause_s = min(2.0, float(error.metadata.get("retry_after_s", "0.5")))
            except ValueError:
                self.pause_s = 0.5
            return target
        raise error from cause


class TapeClaim:
    """What this client holds of a session's tape, so that the call after an abandoned Decode
    stream can say so (``tape_tokens``) and the daemon cuts away the tokens it generated before
    it noticed the cancel, which this client never received.

    ``known`` is the tape length as of the last reply read (EnsurePrefix: prefix_tokens;
    PrefillSuffix: resident; each Decode chunk: its tape_tokens); None when this client cannot
    know it (a restored session before its first call). A Decode counts as unfinished from the
    moment it is made until its final chunk is read, so a stream left early claims ``known`` on
    the next call even before the garbage collector (or the event loop, for async generators)
    has closed it.
    """

    def __init__(self) -> None:
        self.known: int | None = None
        self._unfinished = False

    def to_send(self) -> int | None:
        """The ``tape_tokens`` for the next EnsurePrefix / PrefillSuffix / Decode."""
        return self.known if self._unfinished else None

    def decode_started(self) -> None:
        self._unfinished = True

    def chunk_read(self, tape_tokens: int, final: bool) -> None:
        self.known = tape_tokens
        if final:
            self._unfinished = False

    def answered(self, tape_tokens: int) -> None:
        """A unary call succeeded: the claim (if any) was applied, the tape is this long."""
        self.known = tape_tokens
        self._unfinished = False

    def refused(self, error: RemoteError) -> None:
        """A call failed; a refused claim (the tape is shorter than we thought, e.g. another
        holder of the handle cut it) is forgotten rather than sent again and again."""
        if isinstance(error, InvalidArgument) and error.metadata.get("field") == "tape_tokens":
            self.known = None
            self._unfinished = False


class SessionBase:
    """What a session is on either side: its handle and what opening it said."""

    def __init__(self, info: SessionInfo) -> None:
        self.info = info
        self.handle = info.handle
        self._tape = TapeClaim()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.handle!r})"


class Collector:
    """Decode chunks gathered into one :class:`Completion` (``generate``)."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._thinking: list[str] = []
        self._ids: list[int] = []
        self._tool_calls: list[ToolCall] = []
        self._logprobs: list[TokenLogprob] = []
        self._final: DecodeFinal | None = None

    def add(self, chunk: DecodeChunk) -> None:
        self._texts.append(chunk.text)
        self._thinking.append(chunk.thinking)
        self._ids.extend(chunk.token_ids)
        self._tool_calls.extend(chunk.tool_calls)
        self._logprobs.extend(chunk.logprobs)
        self._final = chunk.final or self._final

    def completion(self) -> Completion:
        assert self._final is not None, "the stream ended without a final chunk"
        return Completion(
            "".join(self._texts),
            tuple(self._ids),
            self._final,
            thinking="".join(self._thinking),
            tool_calls=tuple(self._tool_calls),
            logprobs=tuple(self._logprobs),
        )
