"""Snapshots survive a daemon restart; another model's, another runtime's or a corrupt one never
loads."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from conftest import MODEL, Served, start_served, stop_served

import modeldconn

PROMPT = "A short history of the lighthouse keeper's family, told by the youngest daughter. "


def _restart(old: Served, gemma_file: Path) -> Served:
    old.client.close()
    old.proc.send_signal(signal.SIGTERM)
    assert old.proc.wait(30) == 0
    return start_served(gemma_file, root=old.root)


def test_restore_after_a_restart_continues_identically(gemma_file: Path) -> None:
    daemon = start_served(gemma_file)
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
        daemon = _restart(daemon, gemma_file)
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
    _tamper_header(path, fingerprint={"backend": "llama", "engine": "llama-cpp-python 0.0.1"})
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


def test_a_snapshot_that_cannot_be_written_fails_typed_and_leaves_nothing(
    gemma_file: Path,
) -> None:
    # the daemon may write no file over 1.5 MB: a small snapshot fits, a large one cannot
    daemon = start_served(gemma_file, wrapper=("prlimit", f"--fsize={1536 * 1024}"))
    try:
        with daemon.client.open_session(MODEL) as small:
            small.ensure_prefix("Short.")
            assert small.snapshot().bytes < 1536 * 1024
        with daemon.client.open_session(MODEL) as large:
            large.ensure_prefix(PROMPT * 6)
            with pytest.raises(modeldconn.SnapshotFailed, match="File too large"):
                large.snapshot()
            assert large.generate(max_tokens=4).final.completion_tokens == 4  # still serves
        names = sorted(p.name for p in (daemon.root / "snapshots").iterdir())
        assert len(names) == 1 and names[0].endswith(".snap")  # no partial or temp file
    finally:
        stop_served(daemon)
