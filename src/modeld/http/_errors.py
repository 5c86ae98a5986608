"""The typed error table (``modeldconn._errors``) onto HTTP: a status, and a body in the shape of
the API the request spoke.

Every API a router speaks registers its body shape (:func:`register_shape`) for the paths it
serves; OpenAI's ``{"error": {"message", "type", "param", "code"}}`` is the default. The handlers
installed by :func:`install_handlers` make every failure one of these: a :class:`RemoteError`
from the session layer, a body FastAPI could not parse or validate (400 naming the field, never
422 or 500), a refusal of the HTTP layer itself (:class:`HttpError`), and anything else (500,
logged with its traceback: a bug, never the client's fault).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modeldconn._errors import RemoteError

__all__ = [
    "ApiError",
    "HttpError",
    "api_error",
    "error_response",
    "install_handlers",
    "openai_body",
    "register_shape",
]

log = logging.getLogger("modeld.http")


@dataclass(frozen=True)
class ApiError:
    """One failure, whatever the API: what each shape renders."""

    status: int
    message: str
    #: OpenAI's ``type``: invalid_request_error | authentication_error | not_found_error |
    #: rate_limit_error | server_error | service_unavailable
    type: str
    code: str | None = None  #: the modeld reason, or OpenAI's own code where it has one
    param: str | None = None  #: the refused field, as a path from the request body
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)  #: the typed error's facts


class HttpError(Exception):
    """A refusal of the HTTP layer itself (``n`` > 1, a malformed header), rendered like any
    typed error."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error

    @classmethod
    def invalid(cls, message: str, param: str | None = None) -> HttpError:
        return cls(ApiError(400, message, "invalid_request_error", "invalid_argument", param))


#: reason → (HTTP status, OpenAI type). Reasons not here are the daemon's fault: 500.
_STATUS: dict[str, tuple[int, str]] = {
    "invalid_argument": (400, "invalid_request_error"),
    "context_overflow": (400, "invalid_request_error"),
    "capability_mismatch": (400, "invalid_request_error"),
    "backend_mismatch": (400, "invalid_request_error"),
    "digest_mismatch": (400, "invalid_request_error"),
    "unsupported_feature": (400, "invalid_request_error"),
    "model_load_failed": (400, "invalid_request_error"),
    "insufficient_memory": (400, "invalid_request_error"),
    "unauthenticated": (401, "authentication_error"),
    "model_path_forbidden": (403, "permission_error"),
    "model_not_found": (404, "not_found_error"),
    "session_not_found": (404, "not_found_error"),
    "snapshot_not_found": (404, "not_found_error"),
    "session_busy": (409, "invalid_request_error"),
    "overloaded": (429, "rate_limit_error"),
    "not_ready": (503, "service_unavailable"),
    "draining": (503, "service_unavailable"),
    "stale_fence": (503, "service_unavailable"),
}


def api_error(error: RemoteError, fields: Callable[[str], str] | None = None) -> ApiError:
    """``error`` as an :class:`ApiError`; ``fields`` maps the session layer's field names
    (``temperature``, ``messages``) to the request's own paths."""
    status, kind = _STATUS.get(error.reason, (500, "server_error"))
    meta = dict(error.metadata)
    param = meta.get("field") or None
    if param is not None and fields is not None:
        param = fields(param)
    headers: dict[str, str] = {}
    code: str | None = error.reason
    message = error.message
    if error.reason == "context_overflow":
        code = "context_length_exceeded"  # OpenAI's code; the numbers stay in the message
        param = param or "messages"
        if "n_ctx" in meta:
            message = (
                f"This model's maximum context length is {meta['n_ctx']} tokens; the request "
                f"needs {meta.get('additional', '?')} ({error.message})"
            )
    elif error.reason == "overloaded":
        retry = _float(meta.get("retry_after_s"), 1.0)
        headers["retry-after"] = str(max(1, math.ceil(retry)))
    elif error.reason in ("not_ready", "draining"):
        headers["retry-after"] = "1"
    return ApiError(status, message, kind, code, param, headers, meta)


def _float(text: str | None, default: float) -> float:
    try:
        value = float(text) if text is not None else default
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


def openai_body(error: ApiError) -> dict[str, Any]:
    """OpenAI's error body; ``modeld`` carries the typed error's facts (the numbers of a
    context overflow, say) for clients that want them."""
    body: dict[str, Any] = {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }
    if error.metadata:
        body["error"]["modeld"] = error.metadata
    return body


Shape = Callable[[ApiError], dict[str, Any]]

#: prefix → shape every app starts with: a router module whose API has its own error body adds
#: it at import, so that even the middleware's refusals (401, 503) on its paths take it
DEFAULT_SHAPES: dict[str, Shape] = {}


def register_shape(app: FastAPI, prefix: str, shape: Shape) -> None:
    """Errors of requests whose path starts with ``prefix`` take ``shape`` (the longest
    registered prefix wins; OpenAI's shape otherwise). A router calls this for its paths:
    Anthropic's ``/v1/messages`` answers ``{"type": "error", "error": {...}}``."""
    shapes: dict[str, Shape] = app.state.error_shapes
    shapes[prefix] = shape


def error_response(request: Request, error: ApiError) -> JSONResponse:
    shapes: dict[str, Shape] = request.app.state.error_shapes
    path = request.url.path
    matching = [p for p in shapes if path.startswith(p)]
    shape = shapes[max(matching, key=len)] if matching else openai_body
    return JSONResponse(shape(error), status_code=error.status, headers=error.headers)


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic location (``("body", "messages", 0, "role")``) as a field path
    (``messages[0].role``)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("body", "query", "header", "path") and not path:
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def _validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    param = field_path(loc) or None
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = ctx.get("error", "invalid JSON")
        return f"the request body is not valid JSON: {detail}", None
    message = str(first.get("msg", "invalid request"))
    return (f"{param}: {message}" if param else message), param


def install_handlers(app: FastAPI) -> None:
    """Every failure as an API error (see the module's docstring)."""
    app.state.error_shapes = dict(DEFAULT_SHAPES)

    async def on_remote(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RemoteError)
        error = api_error(exc, getattr(request.state, "field_path", None))
        if error.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(request, error)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError)
        return error_response(request, exc.error)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc.errors())
        error = ApiError(400, message, "invalid_request_error", "invalid_argument", param)
        return error_response(request, error)

    async def on_starlette(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = ApiError(exc.status_code, str(exc.detail), kind, None, None)
        return error_response(request, error)

    async def on_bug(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        error = ApiError(500, f"internal error: {type(exc).__name__}", "server_error", "internal")
        return error_response(request, error)

    app.add_exception_handler(RemoteError, on_remote)
    app.add_exception_handler(HttpError, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_starlette)
    app.add_exception_handler(Exception, on_bug)
