"""In-process units of the lifecycle edges: the lease store's release and renewal limits, and the
serve settings validated together."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemons import run_modeld
from filelock import FileLock

from modeld._errors import ExitCode, StartupError
from modeld.daemon._config import DEFAULT_LEASE_TTL_S, ServeSettings
from modeld.lease._store import LOCK_FILE_NAME, Acquired, LeaseStore, RenewOutcome
from modeldconn._lease import LeaseRecord, read_lease, this_host


def _record(instance_id: str) -> LeaseRecord:
    now = time.time()
    return LeaseRecord(
        instance_id=instance_id,
        pid=os.getpid(),
        pid_start_time=0.0,
        host=this_host(),
        endpoint="unix:///nowhere.sock",
        backend="llama",
        protocol=1,
        version="test",
        acquired_at=now,
        renewed_at=now,
        ttl_s=5.0,
        state="serving",
    )


def _held(tmp_path: Path, instance_id: str = "mine") -> tuple[LeaseStore, LeaseRecord]:
    store = LeaseStore(tmp_path, ttl_s=5.0, lock_timeout_s=2.0)
    won = store.try_acquire(_record(instance_id))
    assert isinstance(won, Acquired)
    return store, won.record


def _named(root: Path) -> str | None:
    record = read_lease(root).record
    return None if record is None else record.instance_id


def test_release_removes_only_our_own_record(tmp_path: Path) -> None:
    store, _ = _held(tmp_path)
    assert store.release("someone-else") is False
    assert _named(tmp_path) == "mine"
    assert store.release("mine") is True
    assert not store.path.exists()


def test_release_waits_for_the_contenders_lock_and_spares_a_new_leaders_record(
    tmp_path: Path,
) -> None:
    """A contender holding the lock writes its record; the release, blocked on that lock, then
    reads the new record and leaves it alone (unlocked, it would have read ours and deleted
    theirs)."""
    store, mine = _held(tmp_path)
    contender = FileLock(tmp_path / LOCK_FILE_NAME)
    locked, go = threading.Event(), threading.Event()

    def take_over() -> None:
        with contender:
            locked.set()
            go.wait(5)
            time.sleep(0.2)  # the release is blocked on the lock by now
            theirs = dataclasses.replace(mine, instance_id="new-leader")
            store.path.write_text(theirs.to_json())

    thread = threading.Thread(target=take_over)
    thread.start()
    assert locked.wait(5)
    go.set()
    started = time.monotonic()
    released = store.release("mine")
    thread.join(5)
    assert released is False and time.monotonic() - started >= 0.15
    assert _named(tmp_path) == "new-leader"


def test_release_leaves_the_lease_to_expire_when_the_lock_stays_held(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path, ttl_s=5.0, lock_timeout_s=0.2)
    won = store.try_acquire(_record("mine"))
    assert isinstance(won, Acquired)
    with FileLock(tmp_path / LOCK_FILE_NAME):  # a frozen contender
        assert store.release("mine") is False
    assert _named(tmp_path) == "mine"  # still there, and it expires on its own


def test_nothing_is_written_after_the_release(tmp_path: Path) -> None:
    """A renewal thread that only runs after the release (its caller gave up on it) must not
    bring the file back."""
    store, mine = _held(tmp_path)
    assert store.release("mine")
    assert store.renew(mine)[0] is RenewOutcome.LOST
    assert not store.path.exists()


def test_a_renewal_past_the_leadership_window_writes_nothing(tmp_path: Path) -> None:
    store, mine = _held(tmp_path)
    before = store.path.read_bytes()
    outcome, _ = store.renew(mine, valid_until=time.monotonic() - 0.001)
    assert outcome is RenewOutcome.BUSY
    assert store.path.read_bytes() == before
    outcome, fresh = store.renew(mine, valid_until=time.monotonic() + 5)
    assert outcome is RenewOutcome.RENEWED and fresh.renewed_at >= mine.renewed_at


def _settings(**changes: Any) -> ServeSettings:
    return dataclasses.replace(ServeSettings(data_root=Path("/tmp"), backend="llama"), **changes)


def test_the_defaults_are_valid_and_the_ttl_default_is_the_clients() -> None:
    settings = _settings()
    settings.validate()
    assert settings.lease_ttl_s == DEFAULT_LEASE_TTL_S == 15.0


def test_a_drain_longer_than_the_ttl_is_fine_because_drain_renews() -> None:
    _settings(lease_ttl_s=1.0, drain_grace_s=30.0).validate()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"lease_ttl_s": 0.0}, "--lease-ttl 0: choose between 0.5 and 3600 s"),
        ({"lease_ttl_s": -1.0}, "--lease-ttl -1"),
        ({"lease_ttl_s": float("nan")}, "--lease-ttl nan"),
        ({"lease_ttl_s": 7200.0}, "--lease-ttl 7200"),
        ({"lease_ttl_s": 1.0, "poll_interval_s": 0.75}, "leadership window (0.75 s"),
        ({"poll_interval_s": 0.0}, "poll interval 0 s"),
        ({"drain_grace_s": -1.0}, "--drain-grace -1"),
        ({"idle_park_s": -1.0}, "--idle-park -1"),
        ({"unload_after_s": float("inf")}, "--unload-after inf"),
        ({"max_live_sessions": 0}, "--max-live-sessions 0"),
        ({"tls_cert_file": Path("/c.pem")}, "--tls-cert and --tls-key go together"),
    ],
)
def test_inconsistent_settings_are_one_startup_error(
    changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(StartupError) as caught:
        _settings(**changes).validate()
    assert expected in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(StartupError) as caught:
        _settings(lease_ttl_s=0.1, drain_grace_s=-2.0, max_live_sessions=0).validate()
    message = str(caught.value)
    assert "--lease-ttl" in message and "--drain-grace" in message
    assert "--max-live-sessions" in message and "\n" not in message


def test_the_cli_reports_them_in_one_line(data_root: Path) -> None:
    out = run_modeld(
        "serve", "--data-root", str(data_root), "--lease-ttl", "0.1", "--drain-grace", "-1"
    )
    assert out.returncode == ExitCode.USAGE
    assert out.stderr.strip().splitlines() == [
        "modeld: --lease-ttl 0.1: choose between 0.5 and 3600 s; "
        "--drain-grace -1: must be 0 or more seconds"
    ]
    assert not (data_root / "modeld.lease").exists()
