"""The engine thread: one thread runs every engine call, first come first served.

Engines are blocking and not safe to call from several threads, so the asyncio side never calls
them directly: it submits a call (awaited as a future) or a stream (a generator the scheduler
steps one item at a time). After each step a stream goes to the back of the queue, so a long
generation lets every other session's work in between its tokens. A cancelled stream is closed
on the engine thread (its ``finally`` blocks run there), which is how a client that hangs up
mid-Decode leaves its session consistent; the cancelled side waits for that close, so when it
goes on, nothing of the stream is still running.

Turns are fair between *tenants* (clients), not only between jobs: every tenant with work
waiting has its own FIFO queue, and the engine thread takes the next job from the tenant that
has had the least engine time (see ``_FairQueue``). A client running 200 Decodes has 200 jobs in
its queue; another client's job waits for the job in flight, not for all 200; and a client
whose turns are short goes ahead of one whose prefill chunks take seconds. The tenant of a job is
the ``TENANT`` context variable where it was submitted (the RPC layer sets it to the caller's
client id; "" for callers that say none, who share one queue).

After every job, before its result reaches the loop, the scheduler calls ``after_job`` on the
engine thread: that is where engine-side statistics are published (as llama.cpp's server
answers ``/metrics`` from its queue thread), so a reply is never ahead of the figures.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, TypeVar

from modeldconn._errors import Overloaded

__all__ = ["TENANT", "EngineScheduler"]

#: who the work submitted from this context is for (the RPC layer sets the client id)
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("modeld_tenant", default="")

log = logging.getLogger("modeld.engine")
T = TypeVar("T")
_DONE = object()


class _Stream:
    def __init__(
        self, generator: Generator[Any, None, None], loop: asyncio.AbstractEventLoop, tenant: str
    ):
        self.generator = generator
        self.tenant = tenant
        self.loop = loop
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False
        #: set on the engine thread once the generator has finished or been closed
        self.finished = threading.Event()
        self.closed: asyncio.Future[None] = loop.create_future()

    def deliver(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.items.put_nowait, item)

    def finish(self) -> None:
        self.finished.set()

        def settle() -> None:
            if not self.closed.done():
                self.closed.set_result(None)

        self.loop.call_soon_threadsafe(settle)


#: how recently another client must have run a job for the engine to count as shared (see
#: ``EngineScheduler.contended``): longer than a client's round trip between two jobs of a
#: turn, shorter than a human pause
CONTENTION_WINDOW_S = 0.5
_FORGET_S = 10.0


class _FairQueue:
    """Per-tenant FIFO queues; the next job comes from the tenant that has had the least engine
    time (its *virtual time*, as in CFS or weighted fair queueing), so a client whose jobs are
    short goes ahead of one running long prefill chunks, and nobody waits for more than the job
    in flight plus one of each other tenant's. Safe between the loop and the engine thread.

    A tenant that becomes active starts at the least virtual time of those active, so a
    newcomer goes next but cannot claim the time it was away; ties go to the tenant served
    least recently (round-robin when jobs cost alike).
    """

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._queues: dict[str, collections.deque[Any]] = {}
        #: engine seconds charged to each active tenant (those with jobs waiting or running)
        self._vtime: dict[str, float] = {}
        #: when each active tenant was last served, to break ties
        self._served_at: dict[str, int] = {}
        self._turn = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def waiting(self, tenant: str) -> int:
        queue = self._queues.get(tenant)
        return len(queue) if queue is not None else 0

    def others_waiting(self, tenant: str) -> bool:
        """Jobs of a named tenant other than ``tenant`` are queued (see ``contended``)."""
        with self._ready:
            return any(t != tenant and t for t in self._queues)

    def put(self, tenant: str, job: Any) -> None:
        with self._ready:
            queue = self._queues.get(tenant)
            if queue is None:
                queue = self._queues[tenant] = collections.deque()
                if tenant not in self._vtime:
                    self._vtime[tenant] = min(self._vtime.values(), default=0.0)
                    self._served_at[tenant] = -1
            queue.append(job)
            self._size += 1
            self._ready.notify()

    def get(self) -> tuple[str, Any]:
        """The next (tenant, job): the head of the queue of the tenant least served so far."""
        with self._ready:
            while not self._queues:
                self._ready.wait()
            tenant = min(self._queues, key=lambda t: (self._vtime[t], self._served_at[t]))
            queue = self._queues[tenant]
            job = queue.popleft()
            self._size -= 1
            if not queue:
                del self._queues[tenant]
            self._turn += 1
            self._served_at[tenant] = self._turn
            return tenant, job

    def charge(self, tenant: str, seconds: float) -> None:
        """The job ``get`` gave out for ``tenant`` took ``seconds`` of engine time."""
        with self._ready:
            self._vtime[tenant] += seconds
            # an idle tenant leaves the accounts: it comes back at the least active time
            for idle in [t for t in self._vtime if t not in self._queues]:
                del self._vtime[idle]
                del self._served_at[idle]


class EngineScheduler:
    """:param max_pending: a tenant's new work is refused (overloaded) once this many of its
        jobs wait.
    :param after_job: called on the engine thread after every job, before its result is
        delivered; must not raise (errors are logged)."""

    def __init__(
        self,
        name: str = "modeld-engine",
        max_pending: int = 1024,
        after_job: Callable[[], None] = lambda: None,
    ) -> None:
        self.max_pending = max_pending
        self.after_job = after_job
        self._jobs = _FairQueue()
        self._running: str | None = None  # the tenant of the job on the engine thread
        #: when each tenant's last job ended (engine thread only)
        self._ended: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting now, all tenants (safe from any thread)."""
        return len(self._jobs)

    def on_engine_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def contended(self, window_s: float = CONTENTION_WINDOW_S) -> bool:
        """Engine thread, inside a job: another tenant has jobs waiting, or had one end less
        than ``window_s`` ago. The second half matters: an interactive client's turn is a few
        jobs in a row (EnsurePrefix, then Decode) with a round trip between them, and each
        arrives while the job in flight started in an empty queue.

        Anonymous jobs (tenant "") do not count as another tenant's: they are the daemon's own
        (loading the --model at start, releases after a client hung up, the idle reaper) or
        calls that name no client. Counting them made a lone client's prefill time-sized
        whenever it came within ``window_s`` of one, so its chunks (and, without
        exact_prefix, its bits) depended on timing."""
        running = self._running
        if running is None:
            return False
        if self._jobs.others_waiting(running):
            return True
        now = time.perf_counter()
        return any(t != running and t and now - at < window_s for t, at in self._ended.items())

    def _admit(self) -> str:
        tenant = TENANT.get()
        waiting = self._jobs.waiting(tenant)
        if waiting >= self.max_pending:
            raise Overloaded(
                f"{waiting} of this client's engine jobs are waiting; retry shortly",
                retry_after_s=1,
            )
        return tenant

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the engine thread and return its result (or raise its error).

        :raises Overloaded: the queue is full.
        """
        tenant = self._admit()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(tenant, ("call", fn, args, future, loop))
        return await future

    def submit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the engine thread, fire and forget (errors are logged)."""
        self._jobs.put(TENANT.get(), ("submit", fn))

    async def stream(self, generator: Generator[T, None, None]) -> AsyncGenerator[T, None]:
        """Iterate ``generator`` on the engine thread; leaving early closes it there and waits
        until it is closed.

        :raises Overloaded: the queue is full.
        """
        tenant = self._admit()
        job = _Stream(generator, asyncio.get_running_loop(), tenant)
        self._jobs.put(tenant, ("stream", job))
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
            if not job.finished.is_set():
                # at most one step away: the stream's next turn on the queue closes it
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(job.closed)

    def close(self) -> None:
        """Stop the engine thread once the jobs queued so far from this context have run."""
        self._jobs.put(TENANT.get(), None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            tenant, job = self._jobs.get()
            if job is None:
                return
            started = time.perf_counter()
            self._running = tenant
            if job[0] == "call":
                self._run_call(*job[1:])
            elif job[0] == "submit":
                try:
                    job[1]()
                except Exception:
                    log.exception("engine job failed")
                self._after()
            else:
                self._step(job[1])
            ended = time.perf_counter()
            self._running = None
            self._ended[tenant] = ended
            # forget tenants quiet for longer than any window asked about
            for quiet in [t for t, at in self._ended.items() if ended - at > _FORGET_S]:
                del self._ended[quiet]
            self._jobs.charge(tenant, ended - started)

    def _after(self) -> None:
        try:
            self.after_job()
        except Exception:
            log.exception("after_job failed")

    def _run_call(
        self,
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
            self._after()
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            self._after()
            loop.call_soon_threadsafe(settle, True, result)

    def _step(self, job: _Stream) -> None:
        if job.cancelled:
            with contextlib.suppress(Exception):
                job.generator.close()
            self._after()
            job.finish()
            return
        try:
            item = next(job.generator)
        except StopIteration:
            self._after()
            job.deliver(_DONE)
            job.finish()
            return
        except BaseException as exc:
            self._after()
            job.deliver(exc)
            job.finish()
            return
        self._after()
        job.deliver(item)
        self._jobs.put(job.tenant, ("stream", job))
