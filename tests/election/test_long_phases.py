"""Leadership stays provable through a model load that outlasts the lease's TTL many times over.

The load is made slow the real way: Gemma 3 270M with ``--lease-ttl 1.0`` while other processes
burn every core, as on the busy 2-core machine where the daemon used to fence itself right after
loading (nobody renewed the lease during the load).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import STARTUP_LIMIT_S, Daemon, DaemonPool, lease_json, wait_for
from served_models import GEMMA, GEMMA_FILE, gemma_gguf

import modeldconn

TTL_S = 1.0
#: leadership lasts TTL - TTL/4 after a renewal: a load longer than this needs renewals during it
WINDOW_S = TTL_S * 0.75
#: how long the leader must keep serving after the load
OBSERVE_S = 5.0
#: the load under the burners; generous for a shared CI machine, far below pytest's limit
LOAD_LIMIT_S = STARTUP_LIMIT_S + 60
_LOADED = re.compile(r"loaded gemma3-270m \(\w+\) in ([\d.]+) s")


@pytest.fixture
def gemma_root(daemons: DaemonPool) -> DaemonPool:
    models = daemons.root / "models"
    models.mkdir()
    (models / GEMMA_FILE).symlink_to(gemma_gguf())
    return daemons


@pytest.fixture
def busy_machine() -> Iterator[None]:
    """One spinning process per core, at the daemon's own priority."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(10)


def _start_gemma(daemons: DaemonPool) -> Daemon:
    return daemons.start("--model", GEMMA, ttl_s=TTL_S)


def _holder_pid(root: Path) -> int | None:
    """The pid of the live holder the lease names, in any state; None when none is."""
    result = modeldconn.probe(data_root=root)
    if result.state is modeldconn.ProbeState.RUNNING and result.lease is not None:
        return result.lease.pid
    return None


def _wait_until_leading(daemons: DaemonPool, daemon: Daemon) -> None:
    wait_for(
        "the daemon to win the lease and start loading",
        lambda: daemons.leader_pid("starting") == daemon.pid or "loaded" in daemon.log(),
        STARTUP_LIMIT_S,
    )
    assert "loaded" not in daemon.log(), "the load ended before the test could watch it"


def test_a_slow_load_keeps_the_lease_and_the_standby_waits(
    gemma_root: DaemonPool, busy_machine: None
) -> None:
    daemons = gemma_root
    leader = _start_gemma(daemons)
    _wait_until_leading(daemons, leader)
    standby = _start_gemma(daemons)

    # Through the whole load, the lease names the leader (live, unexpired): no takeover.
    deadline = time.monotonic() + LOAD_LIMIT_S
    while daemons.leader_pid() != leader.pid:
        assert leader.alive(), leader.log()
        assert _holder_pid(daemons.root) == leader.pid, (lease_json(daemons.root), leader.log())
        assert time.monotonic() < deadline, "the leader did not serve in time"
        time.sleep(0.02)
    loaded = _LOADED.search(leader.log())
    assert loaded is not None, leader.log()
    load_s = float(loaded[1])
    # The premise: without renewals during the load, this leader would have fenced.
    assert load_s > WINDOW_S, f"the load took only {load_s} s; the machine is not busy enough"

    # Serving, and staying so for several TTLs: lease, health and Status agree, the standby waits.
    client = modeldconn.Client(data_root=daemons.root)
    try:
        until = time.monotonic() + OBSERVE_S
        checks = 0
        while time.monotonic() < until:
            assert leader.alive(), leader.log()
            assert standby.alive(), standby.log()
            assert daemons.leader_pid() == leader.pid, lease_json(daemons.root)
            assert modeldconn.probe(data_root=daemons.root, health=True, timeout_s=2).serving
            assert client.status().state == "serving"
            checks += 1
            time.sleep(0.1)
    finally:
        client.close()
    assert "standing by" in standby.log() and "leader:" not in standby.log()
    assert "fenced" not in leader.log()
    print(f"\nload {load_s:.2f} s ({load_s / TTL_S:.1f} TTLs); then {checks} checks, {OBSERVE_S} s")

    leader.signal(signal.SIGTERM)
    assert leader.wait(30) == 0, leader.log()


def test_leadership_lost_during_the_load_fences_without_serving(
    gemma_root: DaemonPool, busy_machine: None
) -> None:
    daemons = gemma_root
    daemon = _start_gemma(daemons)
    _wait_until_leading(daemons, daemon)
    lease = daemons.root / "modeld.lease"
    record = lease_json(daemons.root)
    lease.write_text(lease.read_text().replace(record["instance_id"], "usurper-instance"))
    assert daemon.wait(LOAD_LIMIT_S) == 5, daemon.log()
    log = daemon.log()
    assert "fenced, not serving" in log and "usurper-instance" in log
    assert "serving backend" not in log
    assert "usurper-instance" in lease.read_text()  # never touches a lease that is not its own


def test_sigterm_during_the_load_releases_the_lease(
    gemma_root: DaemonPool, busy_machine: None
) -> None:
    daemons = gemma_root
    daemon = _start_gemma(daemons)
    _wait_until_leading(daemons, daemon)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(LOAD_LIMIT_S) == 0, daemon.log()
    assert "serving backend" not in daemon.log()
    assert not (daemons.root / "modeld.lease").exists()
