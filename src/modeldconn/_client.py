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
from ._errors import NotReady, Overloaded, RemoteError, StaleFence, Unavailable, error_from_rpc
from ._probe import probe
from ._requests import Call
from ._tls import find_tls_ca, open_channel
from ._types import Completion, DecodeChunk, DecodeFinal, DecodeOptions, SessionInfo
from ._wire import AUTH_METADATA_KEY, CLIENT_METADATA_KEY, INSTANCE_METADATA_KEY, find_auth_token

__all__ = ["ClientBase", "Collector", "Retry", "SessionBase", "decode_options"]

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
        if client_id:
            return (
                (INSTANCE_METADATA_KEY, instance),
                (CLIENT_METADATA_KEY, client_id),
                *self._auth,
            )
        return ((INSTANCE_METADATA_KEY, instance), *self._auth)

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
        self._ready_by = time.monotonic() + client._wait_ready_s

    def after(self, exc: Exception, target: tuple[str, str]) -> tuple[str, str]:
        """The target to retry on (after ``pause_s``); raises the typed error when done."""
        error = exc if isinstance(exc, RemoteError) else error_from_rpc(exc)
        cause = exc.__cause__ if isinstance(exc, RemoteError) else exc
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
        if isinstance(error, Overloaded) and time.monotonic() < self._ready_by:
            # busy for a moment (a full queue, every live session busy): retry when it says
            try:
                self.pause_s = min(2.0, float(error.metadata.get("retry_after_s", "0.5")))
            except ValueError:
                self.pause_s = 0.5
            return target
        raise error from cause


class SessionBase:
    """What a session is on either side: its handle and what opening it said."""

    def __init__(self, info: SessionInfo) -> None:
        self.info = info
        self.handle = info.handle

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.handle!r})"


class Collector:
    """Decode chunks gathered into one :class:`Completion` (``generate``)."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._ids: list[int] = []
        self._final: DecodeFinal | None = None

    def add(self, chunk: DecodeChunk) -> None:
        self._texts.append(chunk.text)
        self._ids.extend(chunk.token_ids)
        self._final = chunk.final or self._final

    def completion(self) -> Completion:
        assert self._final is not None, "the stream ended without a final chunk"
        return Completion("".join(self._texts), tuple(self._ids), self._final)
