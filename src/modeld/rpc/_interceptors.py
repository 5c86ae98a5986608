"""The one place where the gate is applied and errors become gRPC statuses.

Servicers raise :class:`modeldconn.RemoteError` subclasses; this interceptor turns each into its
own status with an ``ErrorInfo`` detail. Anything else is a bug: it is logged with its traceback
and answered as ``internal``, so a bad request never looks like a crash and vice versa.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_status import rpc_status

from modeld._logging import REQUEST_ID, SESSION_ID
from modeld._metrics import Metrics
from modeld.engine._scheduler import TENANT
from modeld.lease._gate import Gate
from modeldconn._errors import InternalError, InvalidArgument, RemoteError, UnsupportedProtocol
from modeldconn._wire import (
    CLIENT_METADATA_KEY,
    INSTANCE_METADATA_KEY,
    MIN_PROTOCOL,
    PROTOCOL,
    PROTOCOL_METADATA_KEY,
)

__all__ = ["GateInterceptor"]

log = logging.getLogger("modeld.rpc")

#: Health and reflection answer in every phase and need no fencing token.
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: Answered in any phase (standbys too) and to any protocol, but still fenced: the handshake,
#: which is how a client learns the daemon's protocol and min_protocol in the first place.
_ALWAYS_ANSWERED = frozenset({"/modeld.v1.Modeld/Status"})
#: what a client that does not say its protocol is taken to speak: the one before negotiation
_UNSAID_PROTOCOL = 1


def _header(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return str(value)
    return None


def check_protocol(said: str | None) -> None:
    """:raises UnsupportedProtocol: a client protocol older than MIN_PROTOCOL.
    :raises InvalidArgument: a header that is not a decimal integer, naming it."""
    if said is None:
        client = _UNSAID_PROTOCOL
    else:
        try:
            client = int(said.strip())
        except ValueError:
            raise InvalidArgument(
                f"{PROTOCOL_METADATA_KEY} {said!r} is not a protocol number",
                field=PROTOCOL_METADATA_KEY,
            ) from None
    if client < MIN_PROTOCOL:
        raise UnsupportedProtocol(
            f"client protocol {client} is older than this daemon's min_protocol {MIN_PROTOCOL}",
            client_protocol=client,
            min_protocol=MIN_PROTOCOL,
            protocol=PROTOCOL,
        )


@dataclass(frozen=True)
class _Undecodable:
    """A request body that is not a valid message of the method's type."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, but a body that does not parse (bad wire format, invalid UTF-8 in a
    string field) becomes an :class:`_Undecodable` the wrapped method refuses as
    ``invalid_argument``, instead of grpc's untyped UNKNOWN and a logged traceback."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(f"{type(exc).__name__}: {exc}"[:200])

    return decode


class _RateLimitedLog:
    """At most one warning line per ``interval_s`` (anyone who can reach the socket can send
    garbage; the log must not be theirs to flood). The next line counts what it left out."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._next_at = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return
        self._next_at = now + self._interval_s
        if self._suppressed:
            message += f" ({self._suppressed} more like it not logged)"
            self._suppressed = 0
        log.warning(message, *args)


_garbage_log = _RateLimitedLog()


def _refuse_undecodable(method: str, request: Any) -> None:
    """:raises InvalidArgument: the body did not parse as the method's request message."""
    if isinstance(request, _Undecodable):
        _garbage_log.warning("undecodable request to %s: %s", method, request.error)
        raise InvalidArgument(
            f"the request body is not a valid {method} request: {request.error}", field="request"
        )


def _tag_call(request: Any, context: grpc.aio.ServicerContext) -> None:
    """Give this call's log lines a request id, and the session id when it names a session;
    give its engine work the caller's client id, so the engine takes turns between clients.
    (Each RPC runs in its own asyncio task, so the context variables stay with it.)"""
    REQUEST_ID.set(uuid.uuid4().hex[:12])
    SESSION_ID.set(str(getattr(request, "handle", "")).rpartition("/")[2])
    TENANT.set(_header(context, CLIENT_METADATA_KEY) or "")


async def _abort(context: grpc.aio.ServicerContext, error: RemoteError) -> None:
    status = rpc_status.to_status(error.to_status())
    await context.abort(status.code, status.details, status.trailing_metadata)


class _Outcome:
    """How a call ended, as the metrics count it: a gRPC code name, or what else happened."""

    code = "OK"


@contextlib.asynccontextmanager
async def _statuses(
    method: str, context: grpc.aio.ServicerContext, outcome: _Outcome
) -> AsyncIterator[None]:
    """Every error of a call becomes its status: a ``RemoteError`` its own (with ErrorInfo),
    anything else ``internal`` with the traceback logged; what happened goes in ``outcome``."""
    try:
        yield
    except grpc.aio.AbortError:
        outcome.code = "ABORTED_BY_HANDLER"
        raise  # the behavior already chose its status
    except RemoteError as error:
        outcome.code = error.grpc_code.name
        await _abort(context, error)
    except asyncio.CancelledError:
        outcome.code = "CANCELLED"
        raise
    except Exception:
        outcome.code = "INTERNAL"
        log.exception("internal error in %s", method)
        await _abort(context, InternalError(f"internal error in {method}"))


class GateInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, gate: Gate, metrics: Metrics) -> None:
        self._gate = gate
        self._metrics = metrics
        #: wrapped handlers, built once per method instead of on every call
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> None:
        # an empty x-modeld-instance counts as absent: see the proto's header for why a call
        # may go without it (session calls are fenced by the instance their handle names)
        self._gate.check_fence(_header(context, INSTANCE_METADATA_KEY))
        if method not in _ALWAYS_ANSWERED:
            check_protocol(_header(context, PROTOCOL_METADATA_KEY))
            self._gate.check_serving()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or method.startswith(_OPEN_SERVICES):
            return handler
        self._wrapped[method] = self._wrap(method, handler)
        return self._wrapped[method]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Any:
        name = method.rpartition("/")[2]
        seconds = self._metrics.rpc_seconds.labels(name)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            _tag_call(request, context)
            outcome = _Outcome()
            try:
                async with _statuses(method, context, outcome):
                    self._admit(method, context)
                    _refuse_undecodable(method, request)
                    return await behavior(request, context)
            finally:
                seconds.observe(time.perf_counter() - started)
                self._metrics.rpcs.labels(name, outcome.code).inc()

        return unary

    def _wrap_stream(self, method: str, behavior: Callable[..., AsyncIterator[Any]]) -> Any:
        name = method.rpartition("/")[2]

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _tag_call(request, context)
            outcome = _Outcome()
            try:
                async with _statuses(method, context, outcome):
                    self._admit(method, context)
                    _refuse_undecodable(method, request)
                    async for item in behavior(request, context):
                        yield item
            finally:
                self._metrics.rpcs.labels(name, outcome.code).inc()

        return stream
