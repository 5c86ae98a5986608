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

Release (a clean shutdown) does take the contenders' lock: it reads the file and removes it only
if it still names us, and no contender can write a new record between that read and the unlink.
Within the process, renewals and the release are serialised, and nothing is written after the
release: a renewal thread still running when its caller gave up on it cannot recreate the file.

Readers (the probe, ``lease show``, standbys polling) read the file without any lock, which is
safe because every write replaces the file atomically. A renewal that finds another instance id
in the file means the lease was lost: the caller must fence itself at once. So does a file that
names us but is not a file we wrote (its identity is not one :class:`OwnLeaseFile` knows): a
record forged with our instance id and a dead pid would let a standby in.

A lease path that cannot be written (a directory, a full disk, a root made unreadable) makes a
contender's write raise ``OSError``; the election treats that as "not won" and stands by.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from modeld._atomic import write_atomically
from modeld.lease._gate import OwnLeaseFile
from modeldconn._lease import (
    Assessment,
    FileIdentity,
    LeaseRecord,
    assess_lease,
    lease_path,
    read_lease,
)

__all__ = ["LeaseStore", "RenewOutcome"]

log = logging.getLogger("modeld.election")

LOCK_FILE_NAME = "modeld.lease.lock"


def _replace_unsynced(path: Path, data: bytes, own: OwnLeaseFile) -> None:
    """Replace ``path`` atomically without fsync, for renewals only.

    Readers share the page cache, so they see the old record or the new one either way. What the
    fsyncs would buy is the new ``renewed_at`` surviving a crash of this host, which also ends
    this holder: an older ``renewed_at`` (or, worse, a torn file, which counts as corrupt and ages
    by mtime) only lets a successor in sooner. Meanwhile an fsync on a disk that others keep busy
    can take longer than a short TTL's margin, and fence a healthy leader.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.renew")
    identity: FileIdentity | None = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            # the identity the renamed file will have (a rename keeps inode, size and mtime):
            # known to the gate before the rename, so no stat can find a file it does not know
            identity = FileIdentity.of(os.fstat(handle.fileno()))
        own.expect(identity)
        os.replace(tmp, path)
    except BaseException:
        if identity is not None:
            own.drop(identity)
        tmp.unlink(missing_ok=True)
        raise
    own.settle(identity)


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
        #: this process's own writes (renewals, the release) one at a time, never after release
        self._own_writes = threading.Lock()
        self._released = False
        #: which files at the lease path are ours; the gate compares the path with it
        self.own = OwnLeaseFile(self.path)

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
            back = read_lease(self.root)
            if (
                back.record is None
                or back.record.instance_id != mine.instance_id
                or back.identity is None
            ):
                return self.assess()
            self.own.settle(back.identity)
            return Acquired(mine)

    def renew(
        self, record: LeaseRecord, valid_until: float = float("inf")
    ) -> tuple[RenewOutcome, LeaseRecord]:
        """Rewrite our record with a fresh ``renewed_at`` if the file is still ours (no lock:
        see the module docstring).

        :param valid_until: the monotonic instant our leadership ends; a renewal that only gets
            to run after it (a stalled thread) writes nothing, since a contender may own the file.
        """
        with self._own_writes:
            if self._released:
                return RenewOutcome.LOST, record
            reading = read_lease(self.root)
            if not reading.readable:
                # nothing known of the file (permissions, I/O): not proof that it is another's;
                # renewals keep failing until the window ends, which fences
                raise OSError(f"cannot read the lease: {reading.problem}")
            current = reading.record
            if current is None or current.instance_id != record.instance_id:
                return RenewOutcome.LOST, record
            if self.own.held and reading.identity not in self.own.ours:
                # our instance id in a file we did not write: forged (a dead pid, say)
                return RenewOutcome.LOST, record
            if time.monotonic() >= valid_until:
                return RenewOutcome.BUSY, record
            fresh = dataclasses.replace(record, renewed_at=time.time())
            _replace_unsynced(self.path, fresh.to_json().encode(), self.own)
            return RenewOutcome.RENEWED, fresh

    def release(self, instance_id: str) -> bool:
        """Remove the file if it still names ``instance_id``; True when removed.

        The read and the unlink happen under the contenders' lock, so a record a new leader has
        just written is never removed. If that lock is held past ``lock_timeout_s`` (a frozen
        contender), the file is left to expire instead. Renewals stop for good either way.
        """
        with self._own_writes:
            self._released = True
            self.own.settle(None)
            try:
                with self._lock:
                    current = read_lease(self.root).record
                    if current is None or current.instance_id != instance_id:
                        return False
                    self.path.unlink(missing_ok=True)
                    return True
            except Timeout:
                log.warning("the contenders' lock is held elsewhere: the lease is left to expire")
                return False
