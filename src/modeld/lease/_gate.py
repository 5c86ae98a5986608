"""The daemon's phase, and the gate every RPC but health passes through.

Failure model: leadership is provable only while (a) the last successful renewal is recent
(``valid_until``, by the monotonic clock: a frozen process refuses work the moment it runs again)
and (b) the lease file at the path is still the very file this process wrote last. (b) catches
what renewals alone would notice only at the next renewal, up to TTL/3 later: the file deleted
(a standby takes an absent lease at once), replaced (a record forged to name a dead pid), or
rewritten in place. The gate compares the file's identity (device, inode, size, mtime) with the
identities this process wrote, on every gated call (one ``stat``, reused for at most
``IDENTITY_STAT_EVERY_S``) and, through the election's hold loop, every
``IDENTITY_CHECK_PERIOD_S`` when no call comes; a mismatch fences at once. Standbys that saw a
live holder wait longer than that period (``ABSENT_LEASE_GRACE_S``) before taking a lease that
became absent or names a dead process, so the holder has fenced before they serve.
"""

from __future__ import annotations

import enum
import errno
import os
import time
from pathlib import Path

from modeldconn._errors import Draining, NotReady, StaleFence
from modeldconn._lease import FileIdentity

__all__ = [
    "ABSENT_LEASE_GRACE_S",
    "IDENTITY_CHECK_PERIOD_S",
    "IDENTITY_STAT_EVERY_S",
    "LEASE_MARGIN_FRACTION",
    "Gate",
    "OwnLeaseFile",
    "Phase",
    "leadership_window_s",
]

#: leadership ends this fraction of the TTL before the lease can expire, leaving time to stop
LEASE_MARGIN_FRACTION = 0.25
#: a gated call reuses the last stat of the lease file for at most this long (a stat costs a
#: few microseconds; this bounds it to one per burst of calls)
IDENTITY_STAT_EVERY_S = 0.002
#: the holder checks its lease file this often even when no call comes
IDENTITY_CHECK_PERIOD_S = 0.05
#: a standby that saw a live holder waits this long before taking a lease that became absent
#: or names a dead process while that holder still runs: ten check periods, so the holder has
#: noticed, fenced and refused its last call well before the standby serves
ABSENT_LEASE_GRACE_S = 10 * IDENTITY_CHECK_PERIOD_S


def leadership_window_s(ttl_s: float) -> float:
    """How long one successful renewal keeps a daemon's leadership provable."""
    return ttl_s * (1 - LEASE_MARGIN_FRACTION)


class OwnLeaseFile:
    """The identities the lease file may have while it is this process's own.

    The store adds a file's identity before renaming it over the lease and drops the previous
    one after, so a stat between the two finds either; the set is replaced whole (one atomic
    assignment), so the event loop may read it while a renewal thread writes it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ours: frozenset[FileIdentity] = frozenset()

    def expect(self, identity: FileIdentity) -> None:
        """``identity`` is about to become the lease (before the rename)."""
        self._ours = self._ours | {identity}

    def settle(self, identity: FileIdentity | None) -> None:
        """The lease is now ``identity`` (None: no longer ours, e.g. released)."""
        self._ours = frozenset() if identity is None else frozenset({identity})

    def drop(self, identity: FileIdentity) -> None:
        """A write of ``identity`` failed before or during its rename."""
        self._ours = self._ours - {identity}

    @property
    def held(self) -> bool:
        return bool(self._ours)

    @property
    def ours(self) -> frozenset[FileIdentity]:
        return self._ours

    def problem(self) -> tuple[str, bool] | None:
        """None while the file at the path is one we wrote; else (why, proven): ``proven`` when
        the file is gone or is another file (fence), not when it could not be looked at (an
        I/O or permission error: refuse work, and let the renewals decide)."""
        ours = self._ours
        if not ours:
            return None  # not holding (standby, or after the release): nothing to compare
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return "the lease file was removed", True
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "the lease file was replaced by a symlink", True
            return f"the lease file cannot be checked: {exc.strerror or exc}", False
        if FileIdentity.of(st) in ours:
            return None
        return "the lease file was replaced or rewritten by another writer", True


class Phase(enum.Enum):
    STANDBY = "standby"  #: listening, another instance holds the lease; answers only Status
    STARTING = "starting"  #: lease won (state=starting), not yet serving
    SERVING = "serving"  #: lease says serving and renewals keep it valid
    DRAINING = "draining"  #: SIGTERM/SIGINT received; in-flight work finishes, nothing new starts
    FENCED = "fenced"  #: leadership lost or unprovable; serves nothing until the process exits


class Gate:
    """Decides whether this process may do work right now.

    Leadership is held only until ``valid_until`` (monotonic), pushed forward by each successful
    renewal; a process frozen past it (SIGSTOP, a stuck disk) refuses work the moment it runs
    again, before its renew loop has even noticed. It is also held only while the lease file is
    the one this process wrote (:class:`OwnLeaseFile`, set by the election): the first call
    that finds it gone or replaced fences the gate, and the hold loop then fences the daemon.
    """

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.phase = Phase.STANDBY
        self.valid_until = 0.0
        self.fence_reason = ""
        self.lease_file: OwnLeaseFile | None = None
        #: set when the lease file was found not to be ours; the hold loop fences on it
        self.lost = ""
        self._checked_at = -1.0
        self._check_ok = False

    def check_fence(self, claimed_instance: str | None) -> None:
        if claimed_instance and claimed_instance != self.instance_id:
            raise StaleFence(
                f"this is instance {self.instance_id}; the call was meant for {claimed_instance}",
                served_by=self.instance_id,
                requested=claimed_instance,
            )

    def lease_file_problem(self) -> str:
        """Look at the lease file now; "" when it is ours. A proven loss fences the gate."""
        if self.lost:
            return self.lost
        found = None if self.lease_file is None else self.lease_file.problem()
        self._checked_at = time.monotonic()
        self._check_ok = found is None
        if found is None:
            return ""
        why, proven = found
        if proven:
            # from this instant no call passes; the hold loop sees `lost` and fences the daemon
            self.lost = why
            self.phase, self.fence_reason = Phase.FENCED, why
        return why

    def _lease_file_is_ours(self) -> bool:
        if self._check_ok and time.monotonic() - self._checked_at < IDENTITY_STAT_EVERY_S:
            return True
        return not self.lease_file_problem()

    def check_serving(self) -> None:
        if self.phase is Phase.SERVING:
            if time.monotonic() < self.valid_until:
                if self._lease_file_is_ours():
                    return
                if self.phase is Phase.SERVING:  # not proven lost: an I/O error, say
                    raise NotReady("the lease file cannot be checked; not serving")
            else:
                raise NotReady("the lease could not be renewed in time; not serving")
        if self.phase is Phase.DRAINING:
            raise Draining("the daemon is shutting down")
        if self.phase is Phase.FENCED:
            raise NotReady(f"this instance lost leadership: {self.fence_reason}")
        raise NotReady(f"the daemon is {self.phase.value}", phase=self.phase.value)
