"""Leader election over the data root's lease, kazoo-recipe style.

    election = Election(LeaseStore(root, ttl_s=DEFAULT_LEASE_TTL_S), gate)
    record = await election.campaign(candidate, stop, standby=True)  # blocks while standing by
    held = asyncio.ensure_future(election.hold())  # renews until leadership ends, then says why
    ...  # load, serve, drain: all while `held` keeps the lease renewed
    await election.release()

Failure model, in prose:

* **The holder dies** (crash, ``kill -9``): on this host its pid is gone, so a standby's next poll
  (every ``poll_interval_s``) sees ``holder-dead`` and takes the lease at once. A holder on
  another host is judged by expiry only.
* **The holder hangs** (SIGSTOP, swapped out, a stuck disk): it stops renewing, and its lease
  expires ``ttl_s`` after its last write. It holds leadership only until ``last renewal + ttl_s -
  margin`` by its own monotonic clock; the gate refuses work past that instant, and the renew loop
  fences the daemon, so it has stopped serving before anyone may take over. When it wakes, it
  finds the time passed and fences itself before doing anything else.
* **The holder loses its disk** (renewals raise): same as hanging; failed renewals are retried
  until the margin, then the daemon fences.
* **The file names someone else** (an operator, a clock-skewed peer): the next renewal sees it and
  the daemon fences at once, without touching the file.
* **The file is deleted or replaced** (``rm``, a record forged to name a dead pid): the gate
  compares the file's identity with what this process wrote on every call, and :meth:`hold`
  every ``IDENTITY_CHECK_PERIOD_S``; either fences at once. A standby that had seen a live holder
  does not take such a lease while that holder still runs until ``ABSENT_LEASE_GRACE_S`` (ten
  check periods) has passed, so the holder has stopped serving first. A holder seen to die
  (``kill -9``) is taken over at once.
* **The lease path cannot be written** (a directory, a full disk, an unreadable root): a
  contender's write fails, is logged once per distinct reason, and it keeps standing by.

The daemon runs :meth:`Election.hold` from the moment the lease is won until it is released, so
leadership stays provable through every long phase (loading and converting a model, draining),
however long it takes; whatever the phase, a loss of leadership ends it and fences the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from filelock import Timeout

from modeld._errors import ExitCode, StartupError
from modeld.daemon._sdnotify import pet_watchdog
from modeld.lease._gate import (
    ABSENT_LEASE_GRACE_S,
    IDENTITY_CHECK_PERIOD_S,
    Gate,
    leadership_window_s,
)
from modeld.lease._store import Acquired, LeaseStore, RenewOutcome
from modeldconn._lease import Assessment, LeaseRecord, LeaseStatus, holder_is_alive, this_host

__all__ = ["Election"]

log = logging.getLogger("modeld.election")


def describe_holder(found: Assessment) -> str:
    record = found.record
    if record is None:
        return found.detail
    return (
        f"instance {record.instance_id} (pid {record.pid} on {record.host}, "
        f"{record.backend}, {record.state}, endpoint {record.endpoint})"
    )


class Election:
    """Win, hold and give up the lease of one data root for one daemon process.

    :param poll_interval_s: how often a standby re-reads the lease; bounds takeover time after a
        holder on this host dies.
    """

    def __init__(
        self,
        store: LeaseStore,
        gate: Gate,
        *,
        poll_interval_s: float = 0.2,
        on_renew: Callable[[float], None] = lambda seconds: None,
        activity: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        """:param activity: record fields counted afresh at each renewal (``sessions_open``,
        ``embedding_contexts``); called on the event loop."""
        self._store = store
        self._gate = gate
        self._poll_interval_s = poll_interval_s
        self._ttl_s = store.ttl_s
        self._window_s = leadership_window_s(store.ttl_s)
        self._write_lock = asyncio.Lock()
        self._on_renew = on_renew
        self._activity = activity
        self.record: LeaseRecord | None = None
        # every gated call compares the lease file with the files this store wrote
        gate.lease_file = store.own

    @staticmethod
    def _may_still_serve(seen: LeaseRecord | None) -> bool:
        """Whether the holder we last saw live may still be serving: it runs (on this host),
        or it is on another host, where we cannot tell."""
        if seen is None:
            return False
        return seen.host != this_host() or holder_is_alive(seen.pid, seen.pid_start_time)

    async def campaign(
        self,
        candidate: LeaseRecord,
        stop: asyncio.Event,
        *,
        standby: bool,
        on_wait: Callable[[str], None] = lambda _: None,
    ) -> LeaseRecord | None:
        """Block until this process holds the lease; None if ``stop`` was set first.

        :raises StartupError: with ``standby=False`` when another instance holds the lease.
        """
        last_holder = ""
        last_failure = ""
        #: the last live holder we saw, and since when its lease has looked takeable
        seen_live: LeaseRecord | None = None
        takeable_since: float | None = None
        while not stop.is_set():
            found = self._store.assess()  # lock-free read: cheap enough to poll
            wait_s = self._poll_interval_s
            if found.status is LeaseStatus.LIVE:
                seen_live, takeable_since = found.record, None
            elif found.status.takeable and self._may_still_serve(seen_live):
                # Gone or replaced under a holder that still runs: it fences within one check
                # period of noticing; wait ten before taking, so it no longer serves when we do.
                now = time.monotonic()
                takeable_since = now if takeable_since is None else takeable_since
                left = takeable_since + ABSENT_LEASE_GRACE_S - now
                if left > 0:
                    wait_s = min(wait_s, left)
                    found = dataclasses.replace(
                        found,
                        detail=f"{found.detail}; its holder still runs, taking it in {left:.2f} s",
                    )
            if found.status.takeable and wait_s == self._poll_interval_s:
                started = time.monotonic()
                try:
                    won = await asyncio.to_thread(self._store.try_acquire, candidate)
                except Timeout:
                    won = found  # another contender holds the writers' lock: poll again
                except OSError as exc:
                    # the path cannot be written (a directory, a full disk, no permission):
                    # not won; say so once per reason and keep standing by
                    failure = str(exc.strerror or exc)
                    if failure != last_failure:
                        log.warning("cannot take the lease at %s: %s", self._store.path, failure)
                        last_failure = failure
                    won = found
                if isinstance(won, Acquired):
                    self.record = won.record
                    self._gate.valid_until = started + self._window_s
                    return won.record
                found = won
            pet_watchdog()  # a standby polling the lease is alive too
            holder = describe_holder(found)
            if not found.status.takeable and not standby:
                raise StartupError(
                    f"data root {self._store.root} is led by {holder}; not standing by "
                    "(--no-standby)",
                    exit_code=ExitCode.HELD,
                )
            if holder != last_holder:
                on_wait(holder)
                last_holder = holder
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)
        return None

    async def publish(self, **changes: Any) -> RenewOutcome:
        """Publish new record fields (``state``, ``model``) through a renewal. A renewal that
        fails now keeps them: the renew loop writes them next time."""
        return await self._renew(changes)

    async def _renew(self, changes: dict[str, Any] | None = None) -> RenewOutcome:
        async with self._write_lock:
            assert self.record is not None
            # the counts are free to refresh: every renewal rewrites the whole file anyway
            changes = {**self._activity(), **(changes or {})}
            if changes:
                # under the write lock: no renewal in flight can put the old fields back
                self.record = dataclasses.replace(self.record, **changes)
            wanted = self.record
            started = time.monotonic()
            valid_until = self._gate.valid_until
            budget = valid_until - started
            if budget <= 0:
                return RenewOutcome.BUSY
            try:
                outcome, written = await asyncio.wait_for(
                    asyncio.to_thread(self._store.renew, wanted, valid_until), budget
                )
            except (TimeoutError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc or type(exc).__name__)
                return RenewOutcome.BUSY
            except Exception:  # a bug must not end the renewals silently: the window fences
                log.exception("lease renewal failed")
                return RenewOutcome.BUSY
            if outcome is RenewOutcome.RENEWED:
                # systemd's watchdog is fed by renewals: a daemon that cannot renew is not well
                pet_watchdog()
                self._on_renew(time.monotonic() - started)
                self.record = written
                self._gate.valid_until = started + self._window_s
            return outcome

    async def hold(self) -> str:
        """Renew every ``ttl/3`` until leadership is lost or unprovable; return why it ended."""
        assert self.record is not None
        interval = self._ttl_s / 3
        next_renewal = time.monotonic() + interval
        while True:
            now = time.monotonic()
            wake = min(next_renewal, self._gate.valid_until, now + IDENTITY_CHECK_PERIOD_S)
            await asyncio.sleep(max(0.0, wake - now))
            if self._gate.lease_file_problem() and self._gate.lost:
                found = self._store.assess()
                return f"{self._gate.lost}: it now names {describe_holder(found)}"
            if time.monotonic() >= self._gate.valid_until:
                return f"the lease could not be renewed within {self._window_s:g} s"
            if time.monotonic() < next_renewal:
                continue
            began = time.monotonic()
            outcome = await self._renew()
            if outcome is RenewOutcome.LOST:
                found = self._store.assess()
                return f"the lease was taken over: it now names {describe_holder(found)}"
            # Counted from when this renewal began, not ended: a renewal slowed by a busy machine
            # must not push the next one towards the end of the window it opened.
            next_renewal = (
                began + interval
                if outcome is RenewOutcome.RENEWED
                else time.monotonic() + min(interval, 0.2)
            )

    async def release(self) -> bool:
        """Remove the lease file if it is still ours (clean shutdown only); no renewal follows.

        Stop :meth:`hold` first. The store serialises this with a renewal thread still running
        after its coroutine was cancelled, so that thread cannot write the file back.
        """
        if self.record is None:
            return False
        async with self._write_lock:
            try:
                # bounded: a stuck disk must not hang shutdown; the lease then simply expires
                return await asyncio.wait_for(
                    asyncio.to_thread(self._store.release, self.record.instance_id), self._ttl_s
                )
            except (TimeoutError, OSError) as exc:
                log.warning("lease release failed: %s", exc or type(exc).__name__)
                return False
