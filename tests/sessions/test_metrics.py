"""The Prometheus endpoint, scraped over HTTP from a real daemon after real work."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from daemons import stop_served, wait_for
from served_models import GEMMA as MODEL
from served_models import start_gemma

import modeldconn


def _scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_real_work(gemma_file: Path) -> None:
    daemon = start_gemma(gemma_file, "--metrics-listen", "127.0.0.1:0", "--lease-ttl", "1.5")
    try:
        url = wait_for(
            "the metrics URL",
            lambda: (
                (m := re.search(r"metrics at (http://\S+)", daemon.log.read_text())) and m.group(1)
            ),
            10,
        )
        with daemon.client.open_session(MODEL) as session:
            session.ensure_prefix("Counting sheep: one, two, three,")
            out = session.generate(max_tokens=10, ignore_eos=True)
            with pytest.raises(modeldconn.InvalidArgument):
                session.generate(top_p=5.0)
        samples = wait_for(
            "a renewal",
            lambda: (s := _scrape(url)).get("modeld_lease_renew_seconds_count", 0) > 0 and s,
            10,
        )
        assert samples['modeld_rpcs_total{code="OK",method="EnsurePrefix"}'] >= 1
        assert samples['modeld_rpcs_total{code="OK",method="Decode"}'] >= 1
        assert samples['modeld_rpcs_total{code="INVALID_ARGUMENT",method="Decode"}'] >= 1
        assert samples['modeld_tokens_total{kind="generated"}'] >= out.final.completion_tokens
        assert samples['modeld_tokens_total{kind="prefilled"}'] >= out.final.prompt_tokens
        assert samples["modeld_ttft_seconds_count"] >= 1
        assert samples["modeld_token_seconds_count"] >= 1
        assert samples['modeld_prefix_cache_total{result="miss"}'] >= 1
        assert samples['modeld_leadership_changes_total{event="won"}'] == 1
        assert samples['modeld_sessions{state="live"}'] == 0  # closed by now
        assert 'modeld_rpc_duration_seconds_count{method="OpenSession"}' in samples
    finally:
        stop_served(daemon)


def test_metrics_refuse_a_non_loopback_address(tmp_path: Path) -> None:
    from daemons import run_modeld

    out = run_modeld("serve", "--data-root", str(tmp_path), "--metrics-listen", "0.0.0.0:9100")
    assert out.returncode == 3 and "only loopback" in out.stderr
    assert out.stderr.count("\n") == 1
    assert not list(tmp_path.glob("*.sock")) and not (tmp_path / "modeld.lease").exists()


def test_json_logs_carry_request_and_session_ids(gemma_file: Path) -> None:
    import json

    daemon = start_gemma(gemma_file, "--log-format", "json")
    try:
        session = daemon.client.open_session(MODEL)
        session_id = session.handle.rpartition("/")[2]
        session.close()
        lines = [json.loads(line) for line in daemon.log.read_text().splitlines()]
        opened = next(e for e in lines if e["msg"].startswith("opened session"))
        closed = next(e for e in lines if e["msg"].startswith("closed session"))
        assert session_id in opened["msg"] and opened["request_id"]
        assert closed["session_id"] == session_id and closed["request_id"] != opened["request_id"]
        assert {"ts", "level", "logger", "pid"} <= set(closed)
    finally:
        stop_served(daemon)
