"""`modeld lease show` and the health probe against a real daemon."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))

from daemons import DaemonPool, run_modeld
from test_lease_files import CORRUPT_TEXTS, live_record, write

import modeldconn

LEASE_FIELDS = {
    "schema",
    "instance_id",
    "pid",
    "pid_start_time",
    "host",
    "endpoint",
    "backend",
    "protocol",
    "version",
    "acquired_at",
    "renewed_at",
    "ttl_s",
    "state",
    "model",
}


def test_lease_show_names_the_live_leader(daemons: DaemonPool) -> None:
    daemons.start()
    leader = daemons.wait_leader()
    text = run_modeld("lease", "show", "--data-root", str(daemons.root))
    assert text.returncode == 0
    for label in ("holder", "endpoint", "backend", "state", "age", "expires in"):
        assert label in text.stdout
    assert f"pid {leader}" in text.stdout and "probe state  running" in text.stdout
    shown = json.loads(
        run_modeld("lease", "show", "--json", "--data-root", str(daemons.root)).stdout
    )
    assert set(shown) >= LEASE_FIELDS
    assert shown["probe_state"] == "running" and shown["pid"] == leader
    assert shown["backend"] == "llama" and shown["state"] == "serving"


def test_lease_show_without_a_daemon(data_root: Path) -> None:
    shown = json.loads(run_modeld("lease", "show", "--json", "--data-root", str(data_root)).stdout)
    assert shown["probe_state"] == "not-running"
    write(data_root, CORRUPT_TEXTS["truncated"])
    shown = json.loads(run_modeld("lease", "show", "--json", "--data-root", str(data_root)).stdout)
    assert (shown["probe_state"], shown["stale_reason"]) == ("stale", "corrupt")
    text = run_modeld("lease", "show", "--data-root", str(data_root)).stdout
    assert "stale (corrupt)" in text


def test_health_probe_detects_another_instance(daemons: DaemonPool, tmp_path: Path) -> None:
    daemons.start()
    daemons.wait_leader()
    real = modeldconn.probe(data_root=daemons.root, health=True)
    assert real.state is modeldconn.ProbeState.RUNNING and real.lease is not None
    # a second root whose (live, fresh) lease points at that daemon under another instance id
    other_root = tmp_path / "other"
    other_root.mkdir()
    write(other_root, live_record(endpoint=real.lease.endpoint).to_json())
    result = modeldconn.probe(data_root=other_root, health=True)
    assert (result.state, result.reason) == (modeldconn.ProbeState.UNREACHABLE, "other-instance")
