"""The HTTP app: a FastAPI application bound to the daemon's SessionManager.

Structure (what a new API plugs into):

* :class:`HttpContext` is everything a route needs: the SessionManager, the
  :class:`~modeld.http._binding.SessionBinder` (which session serves a request), the gate, the
  models directory. A route reaches it with ``context(request)``, or as a route parameter
  typed :data:`Ctx`.
* Each API is an ``APIRouter`` in a module of its own (``_openai``); :func:`create_app`
  includes the routers it is given (default: :func:`default_routers`). A router that answers
  errors in another shape registers it for its paths (``_errors.register_shape``).
* :func:`modeld.http._turn.start_turn` runs a conversation turn (bind, EnsurePrefix, Decode,
  diagnostics) for any router.
* Middleware, for every router alike: authentication (the gRPC listener's rule: a token from
  ``--auth-token-file`` is required when given, as ``Authorization: Bearer`` or ``x-api-key``,
  compared in constant time), then the serving gate (503 ``not_ready`` unless this instance
  leads and serves), and the engine's tenant (every HTTP request is the ``http`` client's turn).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from modeld.engine._scheduler import TENANT
from modeld.http._binding import HTTP_CLIENT, SessionBinder
from modeld.http._errors import ApiError, api_error, error_response, install_handlers
from modeld.lease._gate import Gate
from modeld.sessions._manager import SessionManager
from modeldconn._errors import RemoteError

__all__ = ["Ctx", "HttpContext", "context", "create_app", "default_routers"]

#: paths answered without a token and in every phase (liveness for load balancers)
_OPEN_PATHS = frozenset({"/health"})


@dataclass
class HttpContext:
    sessions: SessionManager
    binder: SessionBinder
    gate: Gate
    #: <data root>/models: what GET /v1/models lists besides the loaded models
    models_dir: Path
    #: the --model the daemon loaded at start (listed first), if any
    served_model: str = ""
    #: the bearer token every request must carry (None: none needed; loopback only)
    auth_token: str | None = None


def context(request: Request) -> HttpContext:
    """The app's :class:`HttpContext` (a FastAPI dependency)."""
    ctx: HttpContext = request.app.state.modeld
    return ctx


#: the app's context as a route parameter: ``async def route(body: X, ctx: Ctx)``
Ctx = Annotated[HttpContext, Depends(context)]


def default_routers() -> list[APIRouter]:
    """Every API modeld speaks over HTTP; a new one is added here."""
    from modeld.http._anthropic import router as anthropic
    from modeld.http._openai import router as openai
    from modeld.http._responses import router as responses

    return [openai, anthropic, responses]


def _token_of(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    return request.headers.get("x-api-key")


def _check_token(expected: str, given: str | None) -> ApiError | None:
    if given is None:
        message = "this daemon wants a token: Authorization: Bearer <token> or x-api-key"
    elif hmac.compare_digest(given.encode(), expected.encode()):
        return None
    else:
        message = "the token is not valid"
    return ApiError(401, message, "authentication_error", "unauthenticated")


def create_app(ctx: HttpContext, routers: Sequence[APIRouter] | None = None) -> FastAPI:
    """The app serving ``routers`` (default: every API modeld speaks) over ``ctx``."""
    if routers is None:
        routers = default_routers()
    app = FastAPI(title="modeld", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.modeld = ctx
    install_handlers(app)

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in _OPEN_PATHS:
            return await call_next(request)
        if ctx.auth_token is not None:
            refused = _check_token(ctx.auth_token, _token_of(request))
            if refused is not None:
                return error_response(request, refused)
        try:
            ctx.gate.check_serving()
        except RemoteError as exc:
            return error_response(request, api_error(exc))
        TENANT.set(HTTP_CLIENT)  # fair turns on the engine: HTTP is one client among others
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": ctx.gate.phase.value}

    for router in routers:
        app.include_router(router)
    return app
