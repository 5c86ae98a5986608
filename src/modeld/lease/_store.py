"""Acquire, renew, update and release the lease file.

Contenders take the lease under a lock (``filelock`` on ``modeld.lease.lock``), so exactly one of
them writes an expired, released or dead holder's lease. The holder never takes that lock: a
holder frozen mid-renewal (SIGSTOP, a stuck process) would keep it, and nobody could take its
lease however long it had expired. A holder renews without a lock instead, and that is safe by
timing: it renews only while its own monotonic clock says its leadership is valid, which ends a
margin before anyone may take the lease. Only a holder frozen *between* that check and its write
can overwrite a new holder's record when it wakes; then both fence (its clock says its
leadership ended; the new holder's next renewal finds a foreign record), never both serve, and
a standby takes over from whichever process the file names once that one exits.

Readers (the probe, ``lease show``, standbys polling) read the file without any lock, which is
safe because every write replaces the file atomically. A renewal that finds another instance id
in the file means the lease was lost: the caller must fence itself at once.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from modeld._atomic import write_atomically
from modeldconn._lease import (
    Assessment,
    LeaseRecord,
    assess_lease,
    lease_path,
    read_lease,
)

__all__ = ["LeaseStore", "RenewOutcome"]

LOCK_FILE_NAME = "modeld.lease.lock"


class RenewOutcome(enum.Enum):
    RENEWED = "renewed"  #: the file is ours and now says so with a fresh renewed_at
    LOST = "lost"  #: the file is gone or names another instance: fence now
    BUSY = "busy"  #: not renewed this time (timed out, disk error): transient, try again


@dataclass(frozen=True)
class Acquired:
    record: LeaseRecord


class LeaseStore:
    """The lease of one data root, as seen by one would-be holder.

    :param lock_timeout_s: how long a contender may wait for the contenders' lock before it
        polls the lease again (the holder never takes that lock).
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
        :raises filelock.Timeout: another contender held the lock past ``lock_timeout_s``.
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
        """Rewrite our record with a fresh ``renewed_at`` if the file is still ours (no lock:
        see the module docstring). Call it only while leadership is valid."""
        current = read_lease(self.root).record
        if current is None or current.instance_id != record.instance_id:
            return RenewOutcome.LOST, record
        fresh = dataclasses.replace(record, renewed_at=time.time())
        write_atomically(self.path, fresh.to_json().encode())
        return RenewOutcome.RENEWED, fresh

    def release(self, instance_id: str) -> bool:
        """Remove the file if it still names ``instance_id``; True when removed. Call it only
        while leadership is valid (a clean shutdown), so no contender may be writing."""
        current = read_lease(self.root).record
        if current is None or current.instance_id != instance_id:
            return False
        self.path.unlink(missing_ok=True)
        return True
