"""Every shape a lease file can take, read from real files, judged against real processes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modeldconn
from modeldconn import ProbeState
from modeldconn._lease import (
    LeaseRecord,
    LeaseStatus,
    assess_lease,
    lease_path,
    process_start_time,
    read_lease,
    this_host,
)

TTL = 15.0


def live_record(**changes: object) -> LeaseRecord:
    """A fresh lease held by this very test process."""
    now = time.time()
    record = LeaseRecord(
        instance_id="4b5c0f0e-0000-4000-8000-000000000001",
        pid=os.getpid(),
        pid_start_time=process_start_time(os.getpid()) or 0.0,
        host=this_host(),
        endpoint="unix:///nowhere/modeld.sock",
        backend="llama",
        protocol=1,
        version="test",
        acquired_at=now,
        renewed_at=now,
        ttl_s=TTL,
        state="serving",
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def write(root: Path, text: str, age_s: float = 0.0) -> None:
    path = lease_path(root)
    path.write_text(text)
    if age_s:
        os.utime(path, (time.time() - age_s, time.time() - age_s))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


CORRUPT_TEXTS = {
    "corrupt": "this is not json",
    "truncated": live_record().to_json()[:40],
    "empty": "",
    "unknown-schema": json.dumps({**json.loads(live_record().to_json()), "schema": 99}),
    "not-an-object": "[1, 2, 3]",
    "bad-field": live_record().to_json().replace('"pid": ', '"pid": "x", "_": '),
}


@pytest.mark.parametrize("name", sorted(CORRUPT_TEXTS))
def test_unparseable_files_name_no_holder_until_one_ttl_old(data_root: Path, name: str) -> None:
    write(data_root, CORRUPT_TEXTS[name])
    fresh = assess_lease(read_lease(data_root), default_ttl_s=TTL)
    assert fresh.status is LeaseStatus.CORRUPT and not fresh.status.takeable
    result = modeldconn.probe(data_root=data_root)
    assert (result.state, result.reason) == (ProbeState.STALE, "corrupt")
    assert "corrupt lease" in result.detail
    with pytest.raises(modeldconn.LeaseStale, match="corrupt"):
        result.raise_for_state()

    write(data_root, CORRUPT_TEXTS[name], age_s=TTL + 1)
    old = assess_lease(read_lease(data_root), default_ttl_s=TTL)
    assert old.status is LeaseStatus.CORRUPT_EXPIRED and old.status.takeable


def test_no_file_is_not_running(data_root: Path) -> None:
    result = modeldconn.probe(data_root=data_root)
    assert result.state is ProbeState.NOT_RUNNING and result.lease is None
    assert not modeldconn.available(data_root=data_root)
    assert modeldconn.backend(data_root=data_root) == ""
    with pytest.raises(modeldconn.DaemonNotRunning):
        result.raise_for_state()


def test_fresh_lease_with_live_holder_is_running(data_root: Path) -> None:
    write(data_root, live_record().to_json())
    result = modeldconn.probe(data_root=data_root).raise_for_state()
    assert result.state is ProbeState.RUNNING
    assert result.expires_in_s is not None and 0 < result.expires_in_s <= TTL
    assert modeldconn.available(data_root=data_root)
    assert modeldconn.backend(data_root=data_root) == "llama"


@pytest.mark.parametrize("state", ["starting", "draining"])
def test_running_but_not_serving_is_not_available(data_root: Path, state: str) -> None:
    write(data_root, live_record(state=state).to_json())
    assert modeldconn.probe(data_root=data_root).state is ProbeState.RUNNING
    assert not modeldconn.available(data_root=data_root)


def test_expired_lease_is_stale(data_root: Path) -> None:
    old = time.time() - TTL - 5
    write(data_root, live_record(renewed_at=old, acquired_at=old).to_json())
    result = modeldconn.probe(data_root=data_root)
    assert (result.state, result.reason) == (ProbeState.STALE, "expired")
    assert modeldconn.backend(data_root=data_root) == ""


def test_dead_pid_is_holder_dead(data_root: Path) -> None:
    write(data_root, live_record(pid=dead_pid()).to_json())
    result = modeldconn.probe(data_root=data_root)
    assert (result.state, result.reason) == (ProbeState.STALE, "holder-dead")


def test_live_pid_with_another_start_time_is_holder_dead(data_root: Path) -> None:
    """The pid was recycled: this process is alive but is not the one that took the lease."""
    mine = process_start_time(os.getpid()) or 0.0
    write(data_root, live_record(pid_start_time=mine - 3600).to_json())
    result = modeldconn.probe(data_root=data_root)
    assert (result.state, result.reason) == (ProbeState.STALE, "holder-dead")


def test_holder_on_another_host_is_judged_by_expiry_only(data_root: Path) -> None:
    write(data_root, live_record(host="another-host", pid=dead_pid()).to_json())
    assert modeldconn.probe(data_root=data_root).state is ProbeState.RUNNING


def test_future_dated_lease_is_bounded_by_its_mtime(data_root: Path) -> None:
    future = time.time() + 10 * 3600
    write(data_root, live_record(renewed_at=future).to_json())
    fresh = modeldconn.probe(data_root=data_root)
    assert fresh.state is ProbeState.RUNNING and "future" in fresh.detail
    assert fresh.expires_in_s is not None and fresh.expires_in_s <= TTL
    # the same file, last written more than a TTL ago, cannot live on its future date
    write(data_root, live_record(renewed_at=future).to_json(), age_s=TTL + 1)
    old = modeldconn.probe(data_root=data_root)
    assert (old.state, old.reason) == (ProbeState.STALE, "expired")


def test_set_data_root_points_every_call_at_one_root(data_root: Path) -> None:
    write(data_root, live_record().to_json())
    try:
        modeldconn.set_data_root(data_root)
        assert modeldconn.available() and modeldconn.backend() == "llama"
    finally:
        modeldconn.set_data_root(None)


def test_health_probe_reports_no_answer(data_root: Path) -> None:
    write(data_root, live_record(endpoint=f"unix://{data_root}/nobody.sock").to_json())
    result = modeldconn.probe(data_root=data_root, health=True, timeout_s=0.5)
    assert (result.state, result.reason) == (ProbeState.UNREACHABLE, "no-answer")
    with pytest.raises(modeldconn.DaemonUnreachable):
        result.raise_for_state()
