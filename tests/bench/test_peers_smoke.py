"""The peers benchmark cannot rot: its smoke mode runs here (modeld and the in-process
baselines, tiny sizes), and its bookkeeping never counts a failed turn as throughput."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from served_models import REPO, TINY_FILE, require_backend

sys.path.insert(0, str(REPO / "bench"))

from peers import System, Turn
from peers_bench import Recorder, summarise


def test_smoke_run_produces_json_markdown_and_plot(tmp_path: Path) -> None:
    require_backend("llama")
    pytest.importorskip("matplotlib")
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "peers_bench.py"),
            "--smoke",
            "--model-file",
            str(TINY_FILE),
            "--systems",
            "modeld,native,llama",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads((tmp_path / "peers-smoke.json").read_text())
    assert result["systems"] == ["modeld", "native-loop", "Llama-inprocess"]
    workloads = result["workloads"]
    assert {w.split()[0] for w in workloads} == {"W1", "W3", "W4", "W5", "W6"}
    for name, entry in workloads.items():
        assert entry["failures"] == {}, name
        assert entry["ttft_ms"]["modeld"]["median"] > 0, name
    # same engine, same GGUF, greedy: the baselines give modeld's tokens on fresh prompts
    for name in ("W1 cold 64", "W1 cold 128", "W3 prefix+suffix"):
        agree = workloads[name]["greedy_equal_to_modeld"]
        assert agree == {"native-loop": "1/1", "Llama-inprocess": "1/1"}, name
    # W3 reuses the resident prefix on every system that can
    assert workloads["W3 prefix+suffix"]["reused_median"]["modeld"] > 100
    assert all(v > 0 for v in result["peak_rss_mib"].values())
    table = (tmp_path / "peers-smoke.md").read_text()
    assert "| W3 prefix+suffix | TTFT, ms |" in table
    assert (tmp_path / "peers-smoke.png").read_bytes()[:4] == b"\x89PNG"


class Scripted(System):
    """A stand-in peer for the harness's bookkeeping only (no engine is claimed to work)."""

    def __init__(self, name: str, turns: list[Turn | Exception]) -> None:
        self.name = name
        self._turns = turns

    def turn(self, conv: str, text: str, ids: list[int], n: int) -> Turn:
        outcome = self._turns.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_failed_and_empty_turns_are_failures_not_throughput() -> None:
    good = Turn([1, 2, 3], "abc", 0.010, 100.0, 5)
    modeld = Scripted("modeld", [good, good])
    peer = Scripted(
        "peer",
        [RuntimeError("HTTP 500"), Turn([], "", 0.001, 9999.0, None)],
    )
    rec = Recorder()
    for rep in range(2):
        for system in (modeld, peer):
            rec.turn("W", system, rep, str(rep), ("c", "t", [1], 3))
    summary = summarise(rec, [modeld, peer])["W"]
    assert summary["ttft_ms"].keys() == {"modeld"}  # the peer has no samples at all
    assert summary["decode_tok_s"]["modeld"]["median"] == 100.0
    assert len(summary["failures"]["peer"]) == 2
    assert "HTTP 500" in summary["failures"]["peer"][0]
    assert summary["failures"]["peer"][1].endswith("no tokens")
