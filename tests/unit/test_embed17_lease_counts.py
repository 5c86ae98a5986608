"""The lease's activity counts (sessions_open, embedding_contexts): written as integers that
validate against lease.schema.json, read back as written, and read as 0 when absent (an older
daemon) or not a count (the reader never trusts the file)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modeldconn._lease import LeaseRecord, parse_lease

BASE: dict[str, Any] = {
    "instance_id": "9d00a171-4624-45ea-a843-f584404b74c1",
    "pid": 7260,
    "pid_start_time": 1.0e9,
    "host": "vm",
    "endpoint": "127.0.0.1:7000",
    "backend": "llama",
    "protocol": 1,
    "version": "0.1.0",
    "acquired_at": 1.0e9,
    "renewed_at": 1.0e9,
    "ttl_s": 15.0,
    "state": "serving",
}


def test_counts_round_trip() -> None:
    text = LeaseRecord(**BASE, sessions_open=3, embedding_contexts=2).to_json()
    data = json.loads(text)
    assert (data["sessions_open"], data["embedding_contexts"]) == (3, 2)
    record = parse_lease(text)
    assert (record.sessions_open, record.embedding_contexts) == (3, 2)


@pytest.mark.parametrize("value", [None, -1, "3", True, 2.5, 1 << 40])
def test_anything_but_a_count_reads_as_zero(value: object) -> None:
    data = json.loads(LeaseRecord(**BASE).to_json())
    data["embedding_contexts"] = value
    data["sessions_open"] = value
    record = parse_lease(json.dumps(data))
    assert (record.sessions_open, record.embedding_contexts) == (0, 0)


def test_absent_counts_read_as_zero() -> None:
    data = json.loads(LeaseRecord(**BASE, sessions_open=4).to_json())
    del data["sessions_open"], data["embedding_contexts"]
    assert parse_lease(json.dumps(data)).sessions_open == 0
