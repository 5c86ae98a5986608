"""Acquire, renew, update and release the lease file: every read-decide-write under one lock.

The lock (``filelock`` on ``modeld.lease.lock``) serialises writers only; readers (the probe,
``lease show``, standbys polling) read the lease file without it, which is safe because every
write replaces the file atomically. A renewal that finds another instance id in the file means
the lease was lost: the caller must fence itself at once.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from modeldconn._lease import (
    Assessment,
    LeaseRecord,
    assess_lease,
    lease_path,
    read_lease,
)

from ._atomic import write_atomically

__all__ = ["LeaseStore", "RenewOutcome"]

LOCK_FILE_NAME = "modeld.lease.lock"


class RenewOutcome(enum.Enum):
    RENEWED = "renewed"  #: the file is ours and now says so with a fresh renewed_at
    LOST = "lost"  #: the file is gone or names another instance: fence now
    BUSY = "busy"  #: the lock could not be had in time: transient, try again


@dataclass(frozen=True)
class Acquired:
    record: LeaseRecord


class LeaseStore:
    """The lease of one data root, as seen by one would-be holder.

    :param lock_timeout_s: how long one operation may wait for the writers' lock; a holder that
        cannot get it in time reports BUSY and retries instead of blocking its renew loop.
    """

    def __init__(self, root: Path, *, ttl_s: float, lock_timeout_s: float = 1.0) -> None:
        self.root = root
        self.ttl_s = ttl_s
        self.path = lease_path(root)
        # thread_local=False: the renew thread and the event loop share this object.
        self._lock = FileLock(
            root / LOCK_FILE_NAME,
            timeout=lock_timeout_s,
            mode=0o600,
            thread_local=False,
            # held for a few ms at a time: poll often so a standby is not slowed by the poll
            poll_interval=0.01,
        )

    def assess(self) -> Assessment:
        return assess_lease(read_lease(self.root), default_ttl_s=self.ttl_s)

    def try_acquire(self, record: LeaseRecord) -> Assessment | Acquired:
        """Take the lease for ``record`` if it is free, expired or its holder is dead.

        :returns: :class:`Acquired` with the record as written, or the assessment that says
            who holds it.
        :raises filelock.Timeout: the lock stayed busy past ``lock_timeout_s``.
        """
        with self._lock:
            found = self.assess()
            if not found.status.takeable:
                return found
            now = time.time()
            mine = dataclasses.replace(record, acquired_at=now, renewed_at=now, ttl_s=self.ttl_s)
            write_atomically(self.path, mine.to_json().encode())
            # Belt and braces: another writer that ignored the lock would show up here.
            back = read_lease(self.root).record
            if back is None or back.instance_id != mine.instance_id:
                return self.assess()
            return Acquired(mine)

    def renew(self, record: LeaseRecord) -> tuple[RenewOutcome, LeaseRecord]:
        """Rewrite our record with a fresh ``renewed_at`` if the file is still ours."""
        try:
            with self._lock:
                current = read_lease(self.root).record
                if current is None or current.instance_id != record.instance_id:
                    return RenewOutcome.LOST, record
                fresh = dataclasses.replace(record, renewed_at=time.time())
                write_atomically(self.path, fresh.to_json().encode())
                return RenewOutcome.RENEWED, fresh
        except Timeout:
            return RenewOutcome.BUSY, record

    def release(self, instance_id: str) -> bool:
        """Remove the file if it still names ``instance_id``; True when removed."""
        with self._lock:
            current = read_lease(self.root).record
            if current is None or current.instance_id != instance_id:
                return False
            self.path.unlink(missing_ok=True)
            return True
