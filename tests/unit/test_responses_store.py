"""The Responses API's SQLite store: rows round-trip, survive reopening (a restart), and are
deleted; the database is in WAL mode."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from modeld.http._responses_store import ResponseStore, StoredResponse


def _row(response_id: str, snapshot_id: str | None = None) -> StoredResponse:
    return StoredResponse(
        id=response_id,
        model="tiny",
        created_at=1_700_000_000,
        response={"id": response_id, "object": "response", "output": []},
        messages=[
            {
                "role": "user",
                "content": "héllo",
                "tool_calls": [],
                "tool_call_id": "",
                "name": "",
                "thinking": "",
            }
        ],
        session="handle-1",
        tape_tokens=42,
        snapshot_id=snapshot_id,
    )


def test_rows_round_trip_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "http" / "responses.sqlite3"
    store = ResponseStore(path)
    asyncio.run(store.put(_row("resp_a", "snap1")))
    store.put_now(_row("resp_b"))
    store.close()
    reopened = ResponseStore(path)
    assert asyncio.run(reopened.get("resp_a")) == _row("resp_a", "snap1")
    assert reopened.get_now("resp_b") == _row("resp_b")
    assert reopened.get_now("resp_missing") is None
    assert asyncio.run(reopened.delete("resp_a")) == _row("resp_a", "snap1")
    assert reopened.get_now("resp_a") is None and reopened.delete_now("resp_a") is None
    reopened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
