"""The lease and `modeld status` show embedding contexts next to sessions (issue 17, part 5), on
a real daemon serving all-MiniLM-L6-v2 (llama) with Gemma beside it. The lease counts them at
each renewal (every ttl/3: 0.5 s here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import Served, run_modeld, stop_served, wait_for
from served_models import GEMMA, MINILM, serve_minilm

from modeldconn._lease import LeaseRecord, read_lease

#: renewals every 0.5 s
TTL_S = "1.5"


@pytest.fixture(scope="module")
def minilm() -> Iterator[Served]:
    daemon = serve_minilm("llama", "--lease-ttl", TTL_S)
    yield daemon
    stop_served(daemon)


def _lease_with(root: Path, sessions: int, contexts: int) -> LeaseRecord | None:
    record = read_lease(root).record
    if record is None or (record.sessions_open, record.embedding_contexts) != (sessions, contexts):
        return None
    return record


def test_lease_and_status_count_embedding_contexts_next_to_sessions(minilm: Served) -> None:
    root = minilm.root
    # --model preloads MiniLM's weights; its first context comes with the first Embed
    assert minilm.client.status().embedding_contexts == 0
    wait_for("a lease with nothing open", lambda: _lease_with(root, 0, 0), 10)
    minilm.client.embed(MINILM, ["The river flows.", "A tax form."])
    with minilm.client.open_session(GEMMA, n_ctx=256):
        status = minilm.client.status()
        assert (status.sessions_open, status.embedding_contexts) == (1, 1)
        record = wait_for("the lease to count both", lambda: _lease_with(root, 1, 1), 10)
        assert record.state == "serving"
        shown = run_modeld("lease", "show", "--data-root", str(root))
        assert "1 sessions open, 1 embedding contexts" in shown.stdout, shown.stdout
        as_json = json.loads(run_modeld("lease", "show", "--json", "--data-root", str(root)).stdout)
        assert as_json["embedding_contexts"] == 1 and as_json["sessions_open"] == 1
        printed = run_modeld("status", "--data-root", str(root))
        assert printed.returncode == 0, printed.stderr
        assert "embedding  1 contexts over 1 models" in printed.stdout, printed.stdout
        assert "sessions   1 open" in printed.stdout
    # the session closed: the next renewal says so, the embedding context stays (60 s idle)
    wait_for("the lease to drop the session", lambda: _lease_with(root, 0, 1), 10)
