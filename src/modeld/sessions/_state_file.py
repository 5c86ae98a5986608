"""One file format for saved session state: parked KV on disk and snapshots.

    MODELD-STATE 1\\n
    {json header}\\n
    <kv bytes><logits bytes>

The header carries what the payload is (sizes, token count, its sha256) and, for snapshots, whose
it is (model digest, runtime fingerprint, tape). A payload that does not match its header's
sha256 is corrupt and is refused, never loaded.

Writers keep a free-space reserve (:func:`room_problem`): parked KV and snapshots may never take
the last bytes of the file system the data root is on, so the lease can still be renewed and
written by a successor. A write that fails anyway (``ENOSPC`` from another process filling the
disk) leaves nothing behind and raises ``OSError`` for the caller to type.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from modeld._atomic import write_atomically
from modeld.backends._base import EngineState

__all__ = [
    "StateFileError",
    "read_state_file",
    "read_state_header",
    "room_problem",
    "state_file_size",
    "write_state_file",
]

_MAGIC = b"MODELD-STATE 1\n"
#: what a header adds to the payload, beyond the metadata's own JSON, at most
_HEADER_SLACK = 1024


def state_file_size(state: EngineState, meta: dict[str, Any]) -> int:
    """An upper bound on the size :func:`write_state_file` will write."""
    logits = len(state.logits or b"")
    return len(_MAGIC) + len(json.dumps(meta)) + _HEADER_SLACK + len(state.kv) + logits


def room_problem(directory: Path, need: int, reserve: int) -> str:
    """Why ``need`` more bytes under ``directory`` would eat into ``reserve``; "" if they fit.

    Measured on the nearest existing ancestor (the directory may not exist yet).
    """
    probe_at = directory
    while not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent
    try:
        free = shutil.disk_usage(probe_at).free
    except OSError as exc:
        return f"cannot measure free space under {directory}: {exc.strerror or exc}"
    if free - need < reserve:
        return (
            f"{free} bytes free under {directory}, {need} needed, and {reserve} are kept in "
            "reserve (--disk-reserve) so the lease can always be written"
        )
    return ""


class StateFileError(ValueError):
    """Not a state file, or its payload does not match its header."""


def write_state_file(path: Path, state: EngineState, meta: dict[str, Any]) -> int:
    """Write atomically (temp, fsync, rename); returns the file's size.

    :raises OSError: the disk is full, the file too large, or the directory unwritable; nothing
        is left behind.
    """
    logits = state.logits or b""
    header = {
        **meta,
        "kv_len": state.kv_len,
        "kv_bytes": len(state.kv),
        "logits_bytes": len(logits),
        "sha256": hashlib.sha256(state.kv + logits).hexdigest(),
    }
    head = json.dumps(header, sort_keys=True).encode() + b"\n"
    write_atomically(path, _MAGIC, head, state.kv, logits)
    return path.stat().st_size


def _parse_header(path: Path, line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
        for key in ("kv_bytes", "logits_bytes", "kv_len"):
            int(header[key])
    except (ValueError, KeyError, TypeError):
        raise StateFileError(f"{path.name} has a damaged header") from None
    return dict(header)


def read_state_header(path: Path) -> dict[str, Any]:
    """The header alone, without reading (or checking) the payload."""
    with open(path, "rb") as handle:
        if handle.read(len(_MAGIC)) != _MAGIC:
            raise StateFileError(f"{path.name} is not a modeld state file")
        return _parse_header(path, handle.readline())


def read_state_file(path: Path) -> tuple[EngineState, dict[str, Any]]:
    """:raises StateFileError: not a state file, or corrupt. :raises OSError: unreadable."""
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise StateFileError(f"{path.name} is not a modeld state file")
    end = data.find(b"\n", len(_MAGIC))
    header = _parse_header(path, data[len(_MAGIC) : end])
    kv_bytes, logits_bytes = int(header["kv_bytes"]), int(header["logits_bytes"])
    kv_len = int(header["kv_len"])
    payload = data[end + 1 :]
    if len(payload) != kv_bytes + logits_bytes:
        raise StateFileError(f"{path.name} is truncated")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise StateFileError(f"{path.name} does not match its checksum")
    logits = payload[kv_bytes:] or None
    return EngineState(payload[:kv_bytes], kv_len, logits), header
