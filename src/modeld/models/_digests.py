"""sha256 digests of model files and IR directories, computed once per file version.

Hashing a multi-GB GGUF takes seconds, so a digest is kept in memory and on disk
(``<data root>/cache/digests.json``), keyed by the path and by what changes when the file does:
(inode, size, mtime_ns) summed over an IR's files. ``modeld models list`` run twice, or a daemon
started after a listing, hashes nothing again. The file is a cache: unreadable, damaged or
missing, it is rebuilt; written atomically, so concurrent writers (the CLI and a daemon) can only
lose each other's newest entries, never tear the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

from modeld._atomic import write_atomically
from modeld.models._ir_facts import IR_FILES

__all__ = ["DigestCache", "sha256_of"]

log = logging.getLogger("modeld.models")

#: entries kept on disk (the most recently computed); far above any real models directory
_MAX_ENTRIES = 4096


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """A GGUF file's sha256; for an IR directory, one digest over its files, each named (a
    renamed or swapped file changes it).

    :raises OSError: the file cannot be read.
    """
    if not path.is_dir():
        return _sha256_file(path)
    digest = hashlib.sha256()
    for name in IR_FILES:
        if (path / name).is_file():
            digest.update(f"{name}\0{_sha256_file(path / name)}\n".encode())
    return digest.hexdigest()


def _version(path: Path) -> list[int]:
    """[inode, size, mtime_ns] of the file, or summed over an IR's files (mtime: the newest)."""
    stats = (
        [(path / n).stat() for n in IR_FILES if (path / n).is_file()]
        if path.is_dir()
        else [path.stat()]
    )
    return [
        sum(st.st_ino for st in stats),
        sum(st.st_size for st in stats),
        max((st.st_mtime_ns for st in stats), default=0),
    ]


class DigestCache:
    """Thread-safe; ``file`` None keeps digests in memory only.

    :attr:`computed` counts the digests this object hashed (not found cached): what a test of
    the cache reads.
    """

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] | None = None
        self.computed = 0

    def _load(self) -> dict[str, dict[str, object]]:
        if self._entries is None:
            self._entries = {}
            if self.file is not None:
                try:
                    data = json.loads(self.file.read_text())
                    if isinstance(data, dict):
                        self._entries = {
                            k: v
                            for k, v in data.items()
                            if isinstance(v, dict) and isinstance(v.get("sha256"), str)
                        }
                except (OSError, ValueError):
                    pass  # a cache: missing or damaged, it is rebuilt
        return self._entries

    def digest(self, path: Path) -> str:
        """``path``'s sha256 hex, from the cache when the file has not changed since.

        :raises OSError: the file cannot be read.
        """
        key = str(path.absolute())
        version = _version(path)
        with self._lock:
            for fresh in (False, True):
                if fresh:  # another process (the CLI, a daemon) may have hashed it meanwhile
                    self._entries = None
                entry = self._load().get(key)
                if entry is not None and entry.get("version") == version:
                    return str(entry["sha256"])
        digest = sha256_of(path)
        with self._lock:
            entries = self._load()
            entries.pop(key, None)  # re-inserted last: the newest survive the trim
            entries[key] = {"version": version, "sha256": digest}
            while len(entries) > _MAX_ENTRIES:
                del entries[next(iter(entries))]
            self.computed += 1
            snapshot = json.dumps(entries, indent=1, sort_keys=False)
        self._save(snapshot)
        return digest

    def _save(self, text: str) -> None:
        if self.file is None:
            return
        try:
            self.file.parent.mkdir(mode=0o700, exist_ok=True)  # the data root exists
            write_atomically(self.file, text.encode())
        except OSError as exc:  # a cache that cannot be written only costs a re-hash later
            log.warning("cannot write the digest cache %s: %s", self.file, exc.strerror or exc)
