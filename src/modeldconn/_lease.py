"""Shared with the daemon: the lease record, its schema, lock-free reading, what it says.

The daemon writes and renews records of this schema; clients and the CLI read them here.

A lease is a JSON file, ``<data root>/modeld.lease``, that the leading daemon replaces atomically
(write a temp file, fsync, rename) and renews every ``ttl_s / 3``. Readers never lock.

What a reading proves, failing closed (a holder is gone only on proof):

* no file: nobody leads;
* a file that cannot be parsed, or has a schema this code does not know, names no holder. That
  is not proof that the holder is gone (a newer modeld may be renewing it), so it counts as
  expired only once its mtime is older than one TTL;
* a holder on this host whose pid is gone, a zombie, or alive with another start time (the pid was
  recycled) is dead;
* otherwise the lease expires ``ttl_s`` after ``min(renewed_at, mtime)``: every renewal rewrites the
  file, so a clock that wrote a future ``renewed_at`` cannot stretch a lease past its last write;
* a holder on another host is never judged by pid, only by expiry.
"""

from __future__ import annotations

import enum
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "LEASE_FILE_NAME",
    "LEASE_SCHEMA",
    "Assessment",
    "LeaseRecord",
    "LeaseStatus",
    "LoadedModel",
    "assess_lease",
    "holder_is_alive",
    "lease_path",
    "parse_lease",
    "process_start_time",
    "read_lease",
    "this_host",
]

LEASE_FILE_NAME = "modeld.lease"
LEASE_SCHEMA = 1
#: Two psutil start times of one process agree to the clock tick; anything further apart is
#: another process that reused the pid.
_START_TIME_TOLERANCE_S = 0.05
_STATES = frozenset({"starting", "serving", "draining"})


@dataclass(frozen=True)
class LoadedModel:
    name: str
    digest: str


@dataclass(frozen=True)
class LeaseRecord:
    """One lease as written by a daemon; field names are the file's own."""

    instance_id: str
    pid: int
    pid_start_time: float
    host: str
    endpoint: str
    backend: str
    protocol: int
    version: str
    acquired_at: float
    renewed_at: float
    ttl_s: float
    state: str
    model: LoadedModel | None = None
    #: calls other than health must carry ``authorization: Bearer <token>``
    auth: bool = False
    #: the endpoint speaks TLS (the daemon's --tls-cert); dial it with a verified channel
    tls: bool = False
    schema: int = LEASE_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


class LeaseStatus(enum.Enum):
    ABSENT = "absent"  #: no lease file: nobody leads
    LIVE = "live"  #: fresh lease, holder alive or on another host
    EXPIRED = "expired"  #: not renewed within its TTL
    HOLDER_DEAD = "holder-dead"  #: holder on this host is provably gone
    CORRUPT = "corrupt"  #: unreadable, and written less than one TTL ago: not yet takeable
    CORRUPT_EXPIRED = "corrupt-expired"  #: unreadable and older than one TTL: takeable

    @property
    def takeable(self) -> bool:
        return self in _TAKEABLE


_TAKEABLE = frozenset(
    {LeaseStatus.ABSENT, LeaseStatus.EXPIRED, LeaseStatus.HOLDER_DEAD, LeaseStatus.CORRUPT_EXPIRED}
)


@dataclass(frozen=True)
class LeaseReading:
    """What one read of the lease file found; ``record`` is None when absent or corrupt."""

    record: LeaseRecord | None
    mtime: float | None
    problem: str = ""  # why the file is corrupt; empty when it parsed


@dataclass(frozen=True)
class Assessment:
    status: LeaseStatus
    reading: LeaseReading
    expires_at: float | None  # wall-clock; None when there is no file
    detail: str  # one human sentence: why this status

    @property
    def record(self) -> LeaseRecord | None:
        return self.reading.record


def lease_path(root: Path) -> Path:
    return root / LEASE_FILE_NAME


def this_host() -> str:
    return socket.gethostname()


def process_start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def holder_is_alive(pid: int, start_time: float) -> bool:
    """True unless the process is proven gone; an unreadable process counts as alive."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(proc.create_time() - start_time) <= _START_TIME_TOLERANCE_S
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    # bool is an int in Python; a pid of `true` is still nonsense
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def parse_lease(text: str) -> LeaseRecord:
    """Parse the file's text; raises ``ValueError`` naming what is wrong."""
    if not text.strip():
        raise ValueError("empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    schema = data.get("schema")
    if schema != LEASE_SCHEMA:
        raise ValueError(f"unknown schema {schema!r} (this modeld reads schema {LEASE_SCHEMA})")
    number = (int, float)
    state = _field(data, "state", str)
    if state not in _STATES:
        raise ValueError(f"unknown state {state!r}")
    ttl_s = float(_field(data, "ttl_s", number))
    if not 0 < ttl_s < 86400:
        raise ValueError(f"ttl_s {ttl_s} out of range")
    model_data = data.get("model")
    model = None
    if isinstance(model_data, dict):
        model = LoadedModel(str(model_data.get("name", "")), str(model_data.get("digest", "")))
    return LeaseRecord(
        instance_id=_field(data, "instance_id", str),
        pid=_field(data, "pid", int),
        pid_start_time=float(_field(data, "pid_start_time", number)),
        host=_field(data, "host", str),
        endpoint=_field(data, "endpoint", str),
        backend=_field(data, "backend", str),
        protocol=_field(data, "protocol", int),
        version=_field(data, "version", str),
        acquired_at=float(_field(data, "acquired_at", number)),
        renewed_at=float(_field(data, "renewed_at", number)),
        ttl_s=ttl_s,
        state=state,
        model=model,
        auth=data.get("auth") is True,
        tls=data.get("tls") is True,
    )


def read_lease(root: Path) -> LeaseReading:
    path = lease_path(root)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            mtime = os.fstat(handle.fileno()).st_mtime
            text = handle.read()
    except FileNotFoundError:
        return LeaseReading(record=None, mtime=None)
    try:
        return LeaseReading(record=parse_lease(text), mtime=mtime)
    except ValueError as exc:
        return LeaseReading(record=None, mtime=mtime, problem=str(exc))


def assess_lease(
    reading: LeaseReading,
    *,
    default_ttl_s: float,
    now: float | None = None,
    host: str | None = None,
) -> Assessment:
    """Decide what a reading proves (see the module docstring).

    :param default_ttl_s: the TTL that ages a corrupt file, which names none of its own.
    """
    now = time.time() if now is None else now
    host = this_host() if host is None else host
    if reading.mtime is None:
        return Assessment(LeaseStatus.ABSENT, reading, None, "no lease file")
    record = reading.record
    if record is None:
        expires_at = reading.mtime + default_ttl_s
        if expires_at < now:
            return Assessment(
                LeaseStatus.CORRUPT_EXPIRED,
                reading,
                expires_at,
                f"corrupt lease ({reading.problem}), unchanged for over {default_ttl_s:g} s",
            )
        return Assessment(
            LeaseStatus.CORRUPT,
            reading,
            expires_at,
            f"corrupt lease ({reading.problem}); takeable {expires_at - now:.1f} s from now",
        )
    expires_at = min(record.renewed_at, reading.mtime) + record.ttl_s
    if record.host == host and not holder_is_alive(record.pid, record.pid_start_time):
        return Assessment(
            LeaseStatus.HOLDER_DEAD,
            reading,
            expires_at,
            f"holder pid {record.pid} is gone (or its pid was reused)",
        )
    if expires_at < now:
        return Assessment(
            LeaseStatus.EXPIRED, reading, expires_at, f"not renewed for {now - expires_at:.1f} s"
        )
    detail = f"held by pid {record.pid} on {record.host}"
    if record.renewed_at > reading.mtime + 1.0:
        detail += " (renewed_at lies in the future; the file's mtime bounds the lease)"
    return Assessment(LeaseStatus.LIVE, reading, expires_at, detail)
