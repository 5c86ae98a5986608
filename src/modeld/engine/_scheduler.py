"""One thread runs every engine call, first come first served.

Engines are blocking and not safe to call from several threads, so the asyncio side never calls
them directly: it submits a call (awaited as a future) or a stream (a generator the worker steps
one item at a time). After each step a stream goes to the back of the queue, so a long generation
lets every other session's work in between its tokens. A cancelled stream is closed on the worker
(its ``finally`` blocks run there), which is how a client that hangs up mid-Decode leaves its
session consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, TypeVar

from modeldconn._errors import Overloaded

__all__ = ["EngineWorker"]

log = logging.getLogger("modeld.engine")
T = TypeVar("T")
_DONE = object()


class _Stream:
    def __init__(self, generator: Generator[Any, None, None], loop: asyncio.AbstractEventLoop):
        self.generator = generator
        self.loop = loop
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False

    def deliver(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.items.put_nowait, item)


class EngineWorker:
    def __init__(self, name: str = "modeld-engine", max_pending: int = 1024) -> None:
        #: new work is refused (overloaded) once this many jobs wait
        self.max_pending = max_pending
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._jobs.qsize()

    def _admit(self) -> None:
        if self._jobs.qsize() >= self.max_pending:
            raise Overloaded(
                f"{self._jobs.qsize()} engine jobs are waiting; retry shortly", retry_after_s=1
            )

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        self._admit()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(("call", fn, args, future, loop))
        return await future

    def submit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the worker, fire and forget (errors are logged)."""
        self._jobs.put(("submit", fn))

    async def stream(self, generator: Generator[T, None, None]) -> AsyncIterator[T]:
        """Iterate ``generator`` on the worker; leaving early closes it there."""
        self._admit()
        job = _Stream(generator, asyncio.get_running_loop())
        self._jobs.put(("stream", job))
        try:
            while True:
                item = await job.items.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled = True

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job[0] == "call":
                self._run_call(*job[1:])
            elif job[0] == "submit":
                try:
                    job[1]()
                except Exception:
                    log.exception("engine job failed")
            else:
                self._step(job[1])

    @staticmethod
    def _run_call(
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        def settle(ok: bool, value: Any) -> None:
            if future.cancelled():
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine, never lost here
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    def _step(self, job: _Stream) -> None:
        if job.cancelled:
            with contextlib.suppress(Exception):
                job.generator.close()
            return
        try:
            item = next(job.generator)
        except StopIteration:
            job.deliver(_DONE)
            return
        except BaseException as exc:
            job.deliver(exc)
            return
        job.deliver(item)
        self._jobs.put(("stream", job))
