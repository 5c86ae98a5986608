"""Snapshots survive a daemon restart; another model's, another runtime's or a corrupt one never
loads."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from daemons import Served, stop_served
from served_models import TINY as MODEL
from served_models import serve_tiny

import modeldconn

PROMPT = "A short history of the lighthouse keeper's family, told by the youngest daughter. "


def _restart(old: Served) -> Served:
    old.client.close()
    old.proc.send_signal(signal.SIGTERM)
    assert old.proc.wait(30) == 0
    return serve_tiny(old.backend, root=old.root)


def test_restore_after_a_restart_continues_identically(backend: str) -> None:
    daemon = serve_tiny(backend)
    try:
        with daemon.client.open_session(MODEL) as session:
            session.ensure_prefix(PROMPT)
            session.prefill_suffix(" Chapter one.")
            saved = session.snapshot()
            assert saved.tokens > 0 and saved.bytes > 0
            expected = session.generate(max_tokens=24).token_ids  # the original goes on
            # a second snapshot after decoding: the last sampled token is not computed yet
            later = session.snapshot()
            expected_later = session.generate(max_tokens=12).token_ids
        assert list((daemon.root / "snapshots").glob("*.snap"))
        daemon = _restart(daemon)
        with daemon.client.restore(saved.snapshot_id) as restored:
            assert restored.generate(max_tokens=24).token_ids == expected
        with daemon.client.restore(later.snapshot_id, MODEL) as restored_later:
            assert restored_later.generate(max_tokens=12).token_ids == expected_later
    finally:
        stop_served(daemon)


def _tamper_header(path: Path, **changes: object) -> None:
    data = path.read_bytes()
    first = data.index(b"\n") + 1
    end = data.index(b"\n", first)
    header = json.loads(data[first:end])
    header.update(changes)
    path.write_bytes(data[:first] + json.dumps(header).encode() + data[end:])


def test_foreign_and_corrupt_snapshots_are_refused(served: Served, tmp_path: Path) -> None:
    client = served.client
    with client.open_session(MODEL) as session:
        session.ensure_prefix(PROMPT)
        snap = session.snapshot()
    path = served.root / "snapshots" / f"{snap.snapshot_id}.snap"
    original = path.read_bytes()

    with pytest.raises(modeldconn.SnapshotNotFound):
        client.restore("0" * 32, MODEL)

    _tamper_header(path, model_digest="f" * 64)  # taken on another model
    with pytest.raises(modeldconn.SnapshotMismatch, match="taken on model"):
        client.restore(snap.snapshot_id, MODEL)

    path.write_bytes(original)
    _tamper_header(path, fingerprint={"backend": served.backend, "engine": "an older one 0.0.1"})
    with pytest.raises(modeldconn.SnapshotMismatch, match="runtime"):
        client.restore(snap.snapshot_id, MODEL)

    corrupt = bytearray(original)
    corrupt[-100] ^= 0xFF  # one flipped bit in the payload
    path.write_bytes(bytes(corrupt))
    with pytest.raises(modeldconn.SnapshotMismatch, match="corrupt"):
        client.restore(snap.snapshot_id, MODEL)

    path.write_bytes(original[: len(original) // 2])  # truncated
    with pytest.raises(modeldconn.SnapshotMismatch, match="corrupt"):
        client.restore(snap.snapshot_id, MODEL)

    path.write_bytes(original)  # intact again: it restores
    with client.restore(snap.snapshot_id, MODEL) as restored:
        assert restored.ensure_prefix(PROMPT).reused > 0
    assert client.status().sessions_open == 0
