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


# --- issue 13, fault 2: what else may sit at the lease path. Each is a typed corrupt lease for
# the probe, available(), Client().status() and `modeld lease show`; none raises, hangs, or
# reads without bound.


def _make_dir(path: Path) -> None:
    path.mkdir()


def _make_dev_zero_link(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


def _make_loop(path: Path) -> None:
    path.symlink_to(path.name)


def _make_deep(path: Path) -> None:
    path.write_text("[" * 200_000)


def _make_deep_under_the_cap(path: Path) -> None:
    path.write_text("[" * 60_000 + "]" * 60_000)


def _make_nan(path: Path) -> None:
    path.write_text(live_record().to_json().replace('"renewed_at": ', '"renewed_at": NaN, "_": '))


def _make_infinite(path: Path) -> None:
    text = live_record().to_json().replace('"renewed_at": ', '"renewed_at": 1e999, "_": ')
    path.write_text(text)


def _make_huge_time(path: Path) -> None:
    path.write_text(live_record(renewed_at=1e300).to_json())


BROKEN = {
    "directory": _make_dir,
    "symlink-to-dev-zero": _make_dev_zero_link,
    "fifo": _make_fifo,
    "symlink-loop": _make_loop,
    "200k-nested": _make_deep,
    "60k-nested": _make_deep_under_the_cap,
    "nan-renewed-at": _make_nan,
    "infinite-renewed-at": _make_infinite,
    "year-1e292": _make_huge_time,
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_lease_files_are_corrupt_never_a_traceback(data_root: Path, name: str) -> None:
    from click.testing import CliRunner

    from modeld.cli._main import cli

    BROKEN[name](lease_path(data_root))
    started = time.perf_counter()
    result = modeldconn.probe(data_root=data_root)
    took = time.perf_counter() - started
    assert (result.state, result.reason) == (ProbeState.STALE, "corrupt"), result
    assert took < 0.1, took
    assert not modeldconn.available(data_root=data_root)
    assert modeldconn.backend(data_root=data_root) == ""
    client = modeldconn.Client(data_root=data_root, wait_ready_s=0)
    with pytest.raises(modeldconn.LeaseStale, match="corrupt"):
        client.status()
    client.close()
    shown = CliRunner().invoke(cli, ["lease", "show", "--json", "--data-root", str(data_root)])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["probe_state"] == "stale"


def test_an_unreadable_lease_is_corrupt_for_a_user_who_cannot_read_it(data_root: Path) -> None:
    """Mode 000, read by a process the mode applies to (root without DAC override)."""
    write(data_root, live_record().to_json())
    lease_path(data_root).chmod(0)
    code = (
        "import modeldconn, sys; r = modeldconn.probe(data_root=sys.argv[1]); "
        "print(r.state.value, r.reason, r.detail)"
    )
    command = [sys.executable, "-c", code, str(data_root)]
    if os.getuid() == 0:
        dropped = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={dropped}", f"--bounding-set={dropped}", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("stale corrupt") and "Permission denied" in out.stdout


def test_a_standby_campaign_survives_an_unwritable_lease_path(data_root: Path) -> None:
    """The daemon's side of a directory at the lease path: old enough to be taken, it cannot
    be replaced; the campaign keeps standing by, and wins once the path is free."""
    import asyncio

    from modeld.lease._election import Election
    from modeld.lease._gate import Gate
    from modeld.lease._store import LeaseStore

    path = lease_path(data_root)
    path.mkdir()
    os.utime(path, (time.time() - 3600, time.time() - 3600))

    async def campaign() -> None:
        election = Election(LeaseStore(data_root, ttl_s=TTL), Gate("me"), poll_interval_s=0.02)
        stop = asyncio.Event()
        running = asyncio.ensure_future(
            election.campaign(live_record(instance_id="me"), stop, standby=True)
        )
        await asyncio.sleep(0.3)
        assert not running.done()  # neither won nor crashed
        path.rmdir()
        won = await asyncio.wait_for(running, 5)
        assert won is not None and won.instance_id == "me"

    asyncio.run(campaign())
