"""The HTTP listener: uvicorn, started and stopped inside the daemon's event loop.

Only the leader binds it (``daemon._serve``): bound once the daemon serves, closed when it
drains, fences or stops. The socket is bound here, before uvicorn sees it, so a busy address is
a one-line :class:`StartupError`, port 0 picks a free port (the real one is advertised), and no
other process can share the port (no ``SO_REUSEPORT``). uvicorn's signal handlers are left out
(:class:`_Quiet`): SIGTERM and SIGINT are the daemon's, which stops this server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from modeld._errors import StartupError
from modeld.http._listen import HttpListen

__all__ = ["HttpServer"]

log = logging.getLogger("modeld.http")


class _Quiet(uvicorn.Server):
    """uvicorn's server without its signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


#: how often start() looks whether uvicorn has started
_STARTED_POLL_S = 0.01


class HttpServer:
    """One uvicorn server over ``app`` on ``listen``; :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        app: FastAPI,
        listen: HttpListen,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        grace_s: float = 5.0,
    ) -> None:
        self._listen = listen
        self._tls = tls_cert is not None
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_config=None,  # the daemon's logging, not uvicorn's
            server_header=False,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            timeout_graceful_shutdown=int(max(1, grace_s)),
        )
        config.load()
        self._server = _Quiet(config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return self._listen.url(self.port, self._tls)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # a restarted daemon rebinds at once past TIME_WAIT; never SO_REUSEPORT (that would
            # let a second process share the leader's port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._listen.host, self._listen.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise StartupError(
                f"cannot listen for HTTP on {self._listen.host}:{self._listen.port}: "
                f"{exc.strerror or exc}"
            ) from None
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        """Bind and serve. :raises StartupError: the address cannot be bound, or uvicorn
        would not start on it."""
        self._socket = self._bind()
        self.port = self._socket.getsockname()[1]
        self._task = asyncio.ensure_future(self._server.serve(sockets=[self._socket]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(_STARTED_POLL_S)
        if self._task.done():
            failure = None if self._task.cancelled() else self._task.exception()
            self._task = None
            raise StartupError(f"the HTTP API did not start on {self.url}: {failure}")
        log.info("OpenAI-compatible HTTP API at %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to the grace), close."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None
            if self._socket is not None:
                self._socket.close()
                self._socket = None
