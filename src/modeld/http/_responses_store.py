"""Stored OpenAI responses: one SQLite row per response, under the data root
(``<root>/http/responses.sqlite3``), so ``previous_response_id`` and ``GET /v1/responses/{id}``
survive a daemon restart.

A row holds what a continuation needs without the session that produced it: the response's
JSON (what GET answers), the conversation's whole history as chat messages (every earlier
input and output item, so a continuation can re-render it from scratch), the session handle and
the tape length the response ended at (informative: handles do not outlive the daemon), and the
id of the snapshot taken of that session once it is written.

Threading: one connection in WAL mode (readers never wait for the writer; ``synchronous=NORMAL``
commits without an fsync each), shared by worker threads under a lock. The event loop calls the
async methods, which run the statement on a worker thread (``asyncio.to_thread``): a commit
can still wait for the disk, and the loop must not.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ResponseStore", "StoredResponse"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    response TEXT NOT NULL,
    messages TEXT NOT NULL,
    session TEXT NOT NULL,
    tape_tokens INTEGER NOT NULL,
    snapshot_id TEXT
)
"""


@dataclass(frozen=True)
class StoredResponse:
    id: str  #: ``resp_`` + hex
    model: str
    created_at: int  #: unix seconds
    response: dict[str, Any]  #: the Response object as answered
    #: the whole conversation as chat messages (``{"role", "content", "tool_calls",
    #: "tool_call_id", "thinking"}``), this response's output last; no instructions (OpenAI
    #: does not carry them over to a continuation)
    messages: list[dict[str, Any]]
    session: str  #: the handle of the session that produced it (this daemon's only)
    tape_tokens: int  #: that session's tape length when it ended
    snapshot_id: str | None = None  #: its session's snapshot, once written


class ResponseStore:
    """:param path: the SQLite file (its folder is made, mode 0700)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- synchronous (worker threads) -------------------------------------------------------

    def put_now(self, row: StoredResponse) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id,
                    row.model,
                    row.created_at,
                    json.dumps(row.response, ensure_ascii=False),
                    json.dumps(row.messages, ensure_ascii=False),
                    row.session,
                    row.tape_tokens,
                    row.snapshot_id,
                ),
            )

    def get_now(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            found = self._db.execute(
                "SELECT id, model, created_at, response, messages, session, tape_tokens, "
                "snapshot_id FROM responses WHERE id = ?",
                (response_id,),
            ).fetchone()
        if found is None:
            return None
        return StoredResponse(
            id=found[0],
            model=found[1],
            created_at=int(found[2]),
            response=json.loads(found[3]),
            messages=json.loads(found[4]),
            session=found[5],
            tape_tokens=int(found[6]),
            snapshot_id=found[7],
        )

    def delete_now(self, response_id: str) -> StoredResponse | None:
        """Remove the row; returns what it held (None: there was none)."""
        row = self.get_now(response_id)
        if row is not None:
            with self._lock:
                self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return row

    # -- from the event loop ----------------------------------------------------------------

    async def put(self, row: StoredResponse) -> None:
        await asyncio.to_thread(self.put_now, row)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self.get_now, response_id)

    async def delete(self, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self.delete_now, response_id)
