"""A snapshot the file system refuses fails typed and leaves nothing behind (the contract suite
covers restarts and foreign or corrupt snapshots on both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemons import stop_served
from served_models import GEMMA as MODEL
from served_models import start_gemma

import modeldconn

PROMPT = "A short history of the lighthouse keeper's family, told by the youngest daughter. "


def test_a_snapshot_that_cannot_be_written_fails_typed_and_leaves_nothing(
    gemma_file: Path,
) -> None:
    # the daemon may write no file over 1.5 MB: a small snapshot fits, a large one cannot
    daemon = start_gemma(gemma_file, wrapper=("prlimit", f"--fsize={1536 * 1024}"))
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
