"""Snapshots: sessions persisted under ``<data root>/snapshots/``, surviving daemon restarts.

Each snapshot is one state file (see ``_state_file``) whose header records the model digest, the
runtime fingerprint (backend, engine version, KV layout) and the tape. Restore refuses a snapshot
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

__all__ = ["Snapshot", "SnapshotStore"]

_ID = re.compile(r"^[0-9a-f]{32}$")


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
        """:raises SnapshotNotFound, SnapshotMismatch: unknown id; other model, runtime, corrupt."""
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
        if meta.get("fingerprint") != fingerprint:
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
