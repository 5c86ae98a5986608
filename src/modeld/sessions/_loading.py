"""One load of one model at a time (single flight), within a load timeout.

A :class:`Flight` is a model's load in progress. The first caller that finds the weights out
starts it (the engine thread does the loading); every caller meanwhile waits on the same
flight's ``outcome``. A waiter that gives up (its own shorter timeout, or its RPC cancelled)
only stops waiting: the load goes on for the others.

The flight's own deadline (the load timeout) is a timer on the loop, counted from the moment the
flight starts (time queued behind other engine work included: a client waits for both alike).
When it fires first, every waiter gets :class:`ModelLoadTimeout` at once. The load itself runs
on the engine thread and cannot be interrupted, so it is *abandoned*, not stopped: a flight that
expired before its engine job starts loads nothing, and one that expires mid-load closes the
engine as soon as the load returns, before anything can use it. Whether the load is installed
or abandoned is decided once, under a lock, by whichever side comes first (:meth:`Flight.settle`
on the engine thread, the timer on the loop), so a load is never both returned and closed.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable

from modeldconn._errors import ModelLoadTimeout

__all__ = ["DEFAULT_LOAD_TIMEOUT_S", "Flight"]

#: ``modeld serve --load-timeout``'s default, seconds: above any local load of a model that fits
#: in RAM (Gemma 3 270M loads in ~0.2 s; a 30 GB GGUF from a cold disk in a few minutes)
DEFAULT_LOAD_TIMEOUT_S = 600.0

_RUNNING, _SETTLED, _EXPIRED = "running", "settled", "expired"


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen: a flight nobody waits for any more must not log
    'exception was never retrieved'."""
    if not future.cancelled():
        future.exception()


class Flight:
    """One model's load in progress, shared by every caller that needs it.

    :param name: the model's name, for the timeout error.
    :param timeout_s: the load timeout, seconds; 0 or infinite = none.
    :param on_expire: called on the loop when the timeout fires before the load settled.
    """

    def __init__(self, name: str, timeout_s: float, on_expire: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self.name = name
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        #: the load's result for every waiter: None once installed, or its error
        self.outcome: asyncio.Future[None] = loop.create_future()
        self.outcome.add_done_callback(_retrieve)
        self._state = _RUNNING
        self._lock = threading.Lock()
        self._on_expire = on_expire
        self._timer = (
            loop.call_later(timeout_s, self._expire)
            if timeout_s > 0 and math.isfinite(timeout_s)
            else None
        )

    @property
    def running(self) -> bool:
        """Neither settled nor expired (safe from any thread; a hint, see :meth:`settle`)."""
        return self._state == _RUNNING

    def settle(self) -> bool:
        """Engine thread, when the load has returned: True if the flight was still running, so
        the caller installs the engine; False if it expired meanwhile, so the caller closes it."""
        with self._lock:
            if self._state != _RUNNING:
                return False
            self._state = _SETTLED
            return True

    def finish(self, job: asyncio.Future[None]) -> None:
        """Loop: the engine job is over (done callback of its future)."""
        if self._timer is not None:
            self._timer.cancel()
        error = None if job.cancelled() else job.exception()
        if self.outcome.done():
            return  # expired first: the waiters already have their error
        if job.cancelled():
            self.outcome.cancel()
        elif error is not None:
            self.outcome.set_exception(error)
        else:
            self.outcome.set_result(None)

    def _expire(self) -> None:
        with self._lock:
            if self._state != _RUNNING:
                return  # the load settled just in time: its job's result follows
            self._state = _EXPIRED
        self._on_expire()
        if not self.outcome.done():
            self.outcome.set_exception(self.timeout_error(self.timeout_s))

    def timeout_error(self, timeout_s: float) -> ModelLoadTimeout:
        return ModelLoadTimeout(
            f"{self.name} did not load within {timeout_s:g} s (its load timeout); nothing of "
            "the attempt stays resident",
            name=self.name,
            timeout_s=f"{timeout_s:g}",
        )

    async def wait(self, own_timeout_s: float = 0.0) -> None:
        """Wait for the load (the flight's deadline applies); ``own_timeout_s`` > 0 gives up
        sooner for this caller alone, leaving the load running for the others.

        :raises ModelLoadTimeout: the flight's timeout or this caller's own passed first.
        :raises ModelLoadFailed / InsufficientMemory / Overloaded: the load's own error.
        """
        shielded = asyncio.shield(self.outcome)
        if own_timeout_s <= 0 or not math.isfinite(own_timeout_s):
            await shielded
            return
        try:
            await asyncio.wait_for(shielded, own_timeout_s)
        except asyncio.TimeoutError:
            raise self.timeout_error(own_timeout_s) from None
