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

What reading a file at that path may meet, and must survive (every one of these is *corrupt*,
never a traceback, a hang or an unbounded read): a directory, a FIFO (it would block an ordinary
open), a device or a symlink (``/dev/zero`` would be read until memory ran out; a loop raises
``ELOOP``), a file this user may not read, a file larger than ``MAX_LEASE_BYTES``, JSON nested
deeper than ``MAX_JSON_DEPTH`` (200,000 ``[`` would exhaust the recursion limit), and times
that are not finite (``NaN`` would make a lease that never expires). Only a regular file is
opened, without following links and without blocking; a file whose entry cannot even be
``lstat``-ed counts as written just now, so a standby never takes a lease it cannot see.
"""

from __future__ import annotations

import enum
import errno
import json
import math
import os
import re
import socket
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "LEASE_FILE_NAME",
    "LEASE_SCHEMA",
    "MAX_JSON_DEPTH",
    "MAX_LEASE_BYTES",
    "Assessment",
    "FileIdentity",
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
#: a record is ~600 bytes; anything far larger is not one, and is not read further
MAX_LEASE_BYTES = 64 * 1024
#: a record nests two levels (the object, its ``model``); deeper is not a record
MAX_JSON_DEPTH = 8
#: times a record may carry, seconds since the epoch: 0 to the year 5138. Past that,
#: ``datetime`` cannot print them and sums lose their meaning.
_MAX_EPOCH_S = 1e11
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


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
    #: the HTTP API's base URL (``http(s)://HOST:PORT``, the OpenAI and Anthropic routes under
    #: ``/v1``) once serving with ``--http-listen``; "" when it is off
    http_endpoint: str = ""
    #: open sessions and embedding contexts, as of ``renewed_at`` (each renewal counts them;
    #: 0 from a daemon that does not write them)
    sessions_open: int = 0
    embedding_contexts: int = 0
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
class FileIdentity:
    """Which file a path named when it was read: a replaced, rewritten or touched file has
    another identity (the holder compares it with what it wrote last)."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class LeaseReading:
    """What one read of the lease file found; ``record`` is None when absent or corrupt."""

    record: LeaseRecord | None
    mtime: float | None
    problem: str = ""  # why the file is corrupt; empty when it parsed
    #: the file that was read (None when absent or not read: not a regular file, unreadable)
    identity: FileIdentity | None = None
    #: False when the file could not be read at all (permissions, I/O): nothing is known of
    #: its content, which is not the same as content that names nobody
    readable: bool = True


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
    if not 0 < pid < 1 << 31:  # parse_lease refuses these; psutil would raise OverflowError
        return False
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(proc.create_time() - start_time) <= _START_TIME_TOLERANCE_S
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except (psutil.AccessDenied, OSError):
        return True  # not proof that it is gone


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    # bool is an int in Python; a pid of `true` is still nonsense
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def _time(data: dict[str, Any], name: str) -> float:
    value = float(_field(data, name, (int, float)))
    if not (math.isfinite(value) and 0 <= value <= _MAX_EPOCH_S):
        raise ValueError(f"field {name!r} is not a time ({value!r})")
    return value


def _nesting_depth(text: str) -> int:
    """How deep ``[``/``{`` nest outside strings, counted without recursion."""
    depth = deepest = 0
    for bracket in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_lease(text: str) -> LeaseRecord:
    """Parse the file's text; raises ``ValueError`` naming what is wrong."""
    if not text.strip():
        raise ValueError("empty file")
    if _nesting_depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        # NaN/Infinity are Python's extension to JSON: a NaN renewed_at never expires
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:  # belt and braces: the depth check above should stop these first
        raise ValueError("JSON nested too deep") from None
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
    if not (math.isfinite(ttl_s) and 0 < ttl_s < 86400):
        raise ValueError(f"ttl_s {ttl_s} out of range")
    model_data = data.get("model")
    model = None
    if isinstance(model_data, dict):
        model = LoadedModel(str(model_data.get("name", "")), str(model_data.get("digest", "")))
    pid = _field(data, "pid", int)
    if not 0 < pid < 1 << 31:
        raise ValueError(f"pid {pid} out of range")
    protocol = _field(data, "protocol", int)
    if not 0 <= protocol < 1 << 31:
        raise ValueError(f"protocol {protocol} out of range")
    return LeaseRecord(
        instance_id=_field(data, "instance_id", str),
        pid=pid,
        pid_start_time=_time(data, "pid_start_time"),
        host=_field(data, "host", str),
        endpoint=_field(data, "endpoint", str),
        backend=_field(data, "backend", str),
        protocol=protocol,
        version=_field(data, "version", str),
        acquired_at=_time(data, "acquired_at"),
        renewed_at=_time(data, "renewed_at"),
        ttl_s=ttl_s,
        state=state,
        model=model,
        auth=data.get("auth") is True,
        tls=data.get("tls") is True,
        http_endpoint=_http_endpoint(data.get("http_endpoint")),
        sessions_open=_count(data.get("sessions_open")),
        embedding_contexts=_count(data.get("embedding_contexts")),
    )


def _count(value: object) -> int:
    """A count the daemon advertises, or 0 for anything else (absent from older daemons)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31:
        return value
    return 0


def _http_endpoint(value: object) -> str:
    """An advertised HTTP base URL, or "" for anything else (an older daemon writes none)."""
    if isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) < 512:
        return value
    return ""


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _unreadable(mtime: float, problem: str) -> LeaseReading:
    return LeaseReading(record=None, mtime=mtime, problem=problem, readable=False)


def _read_capped(fd: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= MAX_LEASE_BYTES:
        chunk = os.read(fd, MAX_LEASE_BYTES + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_lease(root: Path) -> LeaseReading:
    """Read the lease without locking, blocking, following links or reading without bound.

    Never raises for anything found at the path (see the module docstring): what cannot be
    read is a corrupt reading with ``readable=False``.
    """
    path = lease_path(root)
    try:
        entry = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return LeaseReading(record=None, mtime=None)
    except (OSError, ValueError) as exc:  # EACCES on the root, ELOOP above it, a NUL in it
        # nothing is known of the file, not even its age: it counts as written just now
        return _unreadable(time.time(), f"unreadable ({_os_problem(exc)})")
    if not stat.S_ISREG(entry.st_mode):
        return _unreadable(entry.st_mtime, f"{_kind(entry.st_mode)}, not a regular file")
    if entry.st_size > MAX_LEASE_BYTES:
        return _unreadable(entry.st_mtime, f"{entry.st_size} bytes, over {MAX_LEASE_BYTES}")
    try:
        # O_NONBLOCK and O_NOFOLLOW: the entry may have been swapped for a FIFO or a link
        # since the lstat; such an open then fails or returns at once instead of hanging
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
        fd = os.open(path, flags)
    except FileNotFoundError:
        return LeaseReading(record=None, mtime=None)
    except OSError as exc:
        return _unreadable(entry.st_mtime, f"unreadable ({_os_problem(exc)})")
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return _unreadable(opened.st_mtime, f"{_kind(opened.st_mode)}, not a regular file")
        data = _read_capped(fd)
    except OSError as exc:
        return _unreadable(entry.st_mtime, f"unreadable ({_os_problem(exc)})")
    finally:
        os.close(fd)
    identity = FileIdentity.of(opened)
    if len(data) > MAX_LEASE_BYTES:  # grew since the fstat: not a record either way
        return LeaseReading(None, opened.st_mtime, f"over {MAX_LEASE_BYTES} bytes", identity)
    try:
        record = parse_lease(data.decode("utf-8", errors="replace"))
    except ValueError as exc:
        return LeaseReading(None, opened.st_mtime, str(exc), identity)
    return LeaseReading(record, opened.st_mtime, "", identity)


def _os_problem(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "a symlink loop"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


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
