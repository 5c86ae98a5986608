"""Snapshots: sessions persisted under ``<data root>/snapshots/``, surviving daemon restarts.

Each snapshot is one state file (see ``_state_file``) whose header records the model digest, the
runtime fingerprint (backend, engine version, KV layout, and the session's KV cache type as
``kv_type``: :func:`runtime_fingerprint`) and the tape. Restore refuses a snapshot
taken on another model or runtime (``snapshot_mismatch``) and a corrupt one, never loading it.
The directory is kept under a byte budget; the least recently used snapshots go first.

A snapshot that would eat into the file system's free-space reserve (``--disk-reserve``) is
refused before anything is written (``snapshot_failed``, saying so), as is one whose write fails
(``ENOSPC``): the lease must stay writable whatever sessions ask for.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeld.backends._base import EngineState
from modeld.sessions._state_file import (
    StateFileError,
    read_state_file,
    read_state_header,
    room_problem,
    state_file_size,
    write_state_file,
)
from modeldconn._errors import SnapshotFailed, SnapshotMismatch, SnapshotNotFound

__all__ = ["Snapshot", "SnapshotStore", "runtime_fingerprint"]

_ID = re.compile(r"^[0-9a-f]{32}$")


def runtime_fingerprint(backend_fingerprint: dict[str, Any], kv_cache_type: str) -> dict[str, Any]:
    """What a session's saved KV depends on besides the model file: the backend's fingerprint
    with the session's KV cache type as ``kv_type`` (a q8_0 state is not an f16 one)."""
    return {**backend_fingerprint, "kv_type": kv_cache_type}


def recorded_kv_cache_type(meta: dict[str, Any]) -> str:
    """The KV cache type a snapshot's header records ("f16" before types existed)."""
    fingerprint = meta.get("fingerprint")
    kv_type = fingerprint.get("kv_type") if isinstance(fingerprint, dict) else None
    return str(kv_type or "f16")


@dataclass(frozen=True)
class Snapshot:
    id: str
    state: EngineState
    model_digest: str
    model_path: str
    fingerprint: dict[str, Any]
    tape: list[int]
    prefix_len: int
    n_ctx: int


class SnapshotStore:
    def __init__(self, directory: Path, budget_bytes: int, reserve_bytes: int = 0) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        #: bytes of the file system that snapshots leave free (the lease must stay writable)
        self.reserve_bytes = reserve_bytes

    def _path(self, snapshot_id: str) -> Path:
        return self.directory / f"{snapshot_id}.snap"

    def save(self, snapshot: Snapshot) -> int:
        """Write it and apply the byte budget; returns its size.

        :raises SnapshotFailed: the write failed (disk full, size limit); no file is left.
        """
        meta = {
            "snapshot": snapshot.id,
            "model_digest": snapshot.model_digest,
            "model_path": snapshot.model_path,
            "fingerprint": snapshot.fingerprint,
            "tape": snapshot.tape,
            "prefix_len": snapshot.prefix_len,
            "n_ctx": snapshot.n_ctx,
        }
        problem = room_problem(
            self.directory, state_file_size(snapshot.state, meta), self.reserve_bytes
        )
        if problem:
            raise SnapshotFailed(f"cannot write the snapshot: {problem}", why="disk_reserve")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            size = write_state_file(self._path(snapshot.id), snapshot.state, meta)
        except OSError as exc:
            raise SnapshotFailed(f"cannot write the snapshot: {exc.strerror or exc}") from None
        self._evict(keep=snapshot.id)
        return size

    def load(
        self, snapshot_id: str, *, model_digest: str | None, fingerprint: dict[str, Any]
    ) -> Snapshot:
        """``fingerprint``: the restoring session's (:func:`runtime_fingerprint`; without
        ``kv_type``, f16).

        :raises SnapshotNotFound, SnapshotMismatch: unknown id; other model, runtime, KV cache
            type, corrupt."""
        if not _ID.match(snapshot_id):
            raise SnapshotNotFound(f"{snapshot_id!r} is not a snapshot id")
        path = self._path(snapshot_id)
        try:
            state, meta = read_state_file(path)
        except FileNotFoundError:
            raise SnapshotNotFound(f"no snapshot {snapshot_id}", snapshot_id=snapshot_id) from None
        except (OSError, StateFileError) as exc:
            raise SnapshotMismatch(
                f"snapshot {snapshot_id} is corrupt: {exc}", snapshot_id=snapshot_id
            ) from None
        if model_digest is not None and meta.get("model_digest") != model_digest:
            raise SnapshotMismatch(
                f"snapshot {snapshot_id} was taken on model {meta.get('model_digest')}, "
                f"not {model_digest}",
                snapshot_id=snapshot_id,
            )
        recorded = recorded_kv_cache_type(meta)
        wanted = str(fingerprint.get("kv_type", "f16"))
        if recorded != wanted:
            raise SnapshotMismatch(
                f"snapshot {snapshot_id} holds a {recorded} KV cache; a {wanted} session cannot "
                f"load it (restore it as {recorded}, or leave kv_cache_type unset)",
                snapshot_id=snapshot_id,
                snapshot_kv_cache_type=recorded,
                kv_cache_type=wanted,
            )
        recorded_fingerprint = meta.get("fingerprint")
        if isinstance(recorded_fingerprint, dict):  # taken before KV types: f16, unrecorded
            recorded_fingerprint = runtime_fingerprint(recorded_fingerprint, recorded)
        if recorded_fingerprint != runtime_fingerprint(fingerprint, wanted):
            raise SnapshotMismatch(
                f"snapshot {snapshot_id} was taken on runtime {meta.get('fingerprint')}, "
                f"this one is {fingerprint}",
                snapshot_id=snapshot_id,
            )
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        return Snapshot(
            id=snapshot_id,
            state=state,
            model_digest=str(meta["model_digest"]),
            model_path=str(meta.get("model_path", "")),
            fingerprint=fingerprint,
            tape=[int(t) for t in meta["tape"]],
            prefix_len=int(meta.get("prefix_len", 0)),
            n_ctx=int(meta["n_ctx"]),
        )

    def recorded_kv_cache_type(self, snapshot_id: str) -> str:
        """The KV cache type the snapshot was taken with, read from its header ("" if the
        snapshot is unknown or unreadable: :meth:`load` then says why)."""
        if not _ID.match(snapshot_id):
            return ""
        try:
            return recorded_kv_cache_type(read_state_header(self._path(snapshot_id)))
        except (OSError, StateFileError):
            return ""

    def recorded_model_path(self, snapshot_id: str) -> str:
        """The model file the snapshot was taken on, read from its header ("" if unknown)."""
        if not _ID.match(snapshot_id):
            return ""
        try:
            return str(read_state_header(self._path(snapshot_id)).get("model_path", ""))
        except (OSError, StateFileError):
            return ""

    def _evict(self, keep: str) -> None:
        files = []
        for path in self.directory.glob("*.snap"):
            with contextlib.suppress(OSError):
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.budget_bytes:
                break
            if path.stem == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex
