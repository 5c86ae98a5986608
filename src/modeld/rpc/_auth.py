"""Bearer-token authentication, checked in constant time before any servicer runs.

Required for every listener once ``--auth-token-file`` is given, and a non-loopback TCP listener
refuses to start without it. The standard health service stays open (it says nothing but
SERVING / NOT_SERVING), so load balancers and `probe(health=True)` can still ask.
"""

from __future__ import annotations

import hmac
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_status import rpc_status

from modeld._errors import StartupError
from modeldconn._errors import Unauthenticated
from modeldconn._wire import AUTH_METADATA_KEY

__all__ = ["AuthInterceptor", "read_token_file"]

_OPEN = "/grpc.health.v1.Health/"
_MIN_TOKEN_CHARS = 16


def read_token_file(path: Path) -> str:
    """:raises StartupError: missing, readable by group or others, or too short a token."""
    try:
        st = path.stat()
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StartupError(f"--auth-token-file {path}: {exc.strerror or exc}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise StartupError(
            f"--auth-token-file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o});"
            " chmod 600 it"
        )
    if len(token) < _MIN_TOKEN_CHARS:
        raise StartupError(f"--auth-token-file {path}: a token needs {_MIN_TOKEN_CHARS}+ chars")
    return token


def _refusal(message: str, like: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``like`` that answers UNAUTHENTICATED."""
    status = rpc_status.to_status(Unauthenticated(message).to_status())

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)
        yield  # pragma: no cover - never reached: abort raises

    if like.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            refuse_stream, request_deserializer=like.request_deserializer
        )
    return grpc.unary_unary_rpc_method_handler(
        refuse, request_deserializer=like.request_deserializer
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN):
            return handler
        given = next(
            (v for k, v in details.invocation_metadata or () if k == AUTH_METADATA_KEY), None
        )
        if given is None:
            return _refusal("this daemon wants an authorization token", handler)
        raw = given.encode() if isinstance(given, str) else bytes(given)
        if not hmac.compare_digest(raw, self._expected):
            return _refusal("the authorization token is not valid", handler)
        return handler
