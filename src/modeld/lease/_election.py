"""Leader election over the data root's lease, kazoo-recipe style.

    election = Election(LeaseStore(root, ttl_s=15), gate)
    record = await election.campaign(candidate, stop, standby=True)  # blocks while standing by
    reason = await election.hold()  # returns when leadership ends

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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from filelock import Timeout

from modeld._errors import ExitCode, StartupError
from modeld.daemon._sdnotify import pet_watchdog
from modeld.lease._gate import Gate
from modeld.lease._store import Acquired, LeaseStore, RenewOutcome
from modeldconn._lease import Assessment, LeaseRecord

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
    ) -> None:
        self._store = store
        self._gate = gate
        self._poll_interval_s = poll_interval_s
        self._ttl_s = store.ttl_s
        #: leadership ends this long before the lease can expire, leaving time to stop
        self._margin_s = store.ttl_s / 4
        self._write_lock = asyncio.Lock()
        self._on_renew = on_renew
        self.record: LeaseRecord | None = None

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
        while not stop.is_set():
            found = self._store.assess()  # lock-free read: cheap enough to poll
            if found.status.takeable:
                started = time.monotonic()
                try:
                    won = await asyncio.to_thread(self._store.try_acquire, candidate)
                except Timeout:
                    won = found  # another contender holds the writers' lock: poll again
                if isinstance(won, Acquired):
                    self.record = won.record
                    self._gate.valid_until = started + self._ttl_s - self._margin_s
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
                await asyncio.wait_for(stop.wait(), self._poll_interval_s)
        return None

    async def set_state(self, state: str) -> None:
        """Publish a new state (serving, draining) through a renewal."""
        assert self.record is not None
        await self._renew(dataclasses.replace(self.record, state=state))

    async def _renew(self, wanted: LeaseRecord) -> RenewOutcome:
        async with self._write_lock:
            started = time.monotonic()
            budget = self._gate.valid_until - started
            if budget <= 0:
                return RenewOutcome.BUSY
            try:
                outcome, written = await asyncio.wait_for(
                    asyncio.to_thread(self._store.renew, wanted), budget
                )
            except (TimeoutError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc or type(exc).__name__)
                return RenewOutcome.BUSY
            if outcome is RenewOutcome.RENEWED:
                # systemd's watchdog is fed by renewals: a daemon that cannot renew is not well
                pet_watchdog()
                self._on_renew(time.monotonic() - started)
                self.record = written
                self._gate.valid_until = started + self._ttl_s - self._margin_s
            return outcome

    async def hold(self) -> str:
        """Renew every ``ttl/3`` until leadership is lost or unprovable; return why it ended."""
        assert self.record is not None
        interval = self._ttl_s / 3
        next_renewal = time.monotonic() + interval
        while True:
            now = time.monotonic()
            await asyncio.sleep(max(0.0, min(next_renewal, self._gate.valid_until) - now))
            if time.monotonic() >= self._gate.valid_until:
                return f"the lease could not be renewed within {self._ttl_s - self._margin_s:g} s"
            outcome = await self._renew(self.record)
            if outcome is RenewOutcome.LOST:
                found = self._store.assess()
                return f"the lease was taken over: it now names {describe_holder(found)}"
            next_renewal = time.monotonic() + (
                interval if outcome is RenewOutcome.RENEWED else min(interval, 0.2)
            )

    def release(self) -> bool:
        """Remove the lease file if it is still ours (clean shutdown only)."""
        if self.record is None:
            return False
        return self._store.release(self.record.instance_id)
