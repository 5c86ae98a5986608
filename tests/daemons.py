"""Real `modeld serve` processes for tests, and polling helpers with named time limits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import modeldconn

#: Long enough for a loaded 2-core CI machine to start Python and grpc; far below pytest's limit.
STARTUP_LIMIT_S = 20.0
#: A short TTL keeps expiry tests fast; renewals run every TTL/3 = 0.5 s.
SHORT_TTL_S = 1.5

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], limit_s: float, step_s: float = 0.02) -> T:
    deadline = time.monotonic() + limit_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        time.sleep(step_s)


def modeld_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "modeld", *args]


def run_modeld(
    *args: str, timeout: float = 30.0, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        modeld_command(*args), capture_output=True, text=True, timeout=timeout, **kwargs
    )


def lease_json(root: Path) -> dict[str, Any]:
    out = run_modeld("lease", "show", "--json", "--data-root", str(root))
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


class Daemon:
    def __init__(self, root: Path, args: tuple[str, ...], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in reap()
        self.proc = subprocess.Popen(
            modeld_command("serve", "--data-root", str(root), *args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def alive(self) -> bool:
        return self.proc.poll() is None


class DaemonPool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Daemon] = []

    def start(self, *args: str, ttl_s: float = SHORT_TTL_S) -> Daemon:
        log_path = self.root.parent / f"{self.root.name}-daemon{len(self.started)}.log"
        daemon = Daemon(self.root, ("--lease-ttl", str(ttl_s), *args), log_path)
        self.started.append(daemon)
        return daemon

    def leader_pid(self, state: str = "serving") -> int | None:
        """The pid the lease names as a live holder in ``state`` (read in-process: fast)."""
        result = modeldconn.probe(data_root=self.root)
        if result.state is modeldconn.ProbeState.RUNNING and result.lease is not None:
            return result.lease.pid if result.lease.state == state else None
        return None

    def wait_leader(self, limit_s: float = STARTUP_LIMIT_S) -> int:
        return wait_for("a serving leader", self.leader_pid, limit_s)

    def by_pid(self, pid: int) -> Daemon:
        return next(d for d in self.started if d.pid == pid)

    def kill_all(self) -> None:
        for daemon in self.started:
            if daemon.alive():
                daemon.signal(signal.SIGKILL)
            daemon.wait(10)
            daemon.log_path.unlink(missing_ok=True)


class Served:
    """A daemon serving models from a data root of its own, with a client on it."""

    def __init__(self, root: Path, proc: subprocess.Popen[str], log: Path, backend: str) -> None:
        self.root = root
        self.proc = proc
        self.log = log
        self.backend = backend
        self.client = modeldconn.Client(data_root=root)

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_served(
    models: Mapping[str, Path],
    *args: str,
    model: str,
    backend: str = "llama",
    root: Path | None = None,
    wrapper: tuple[str, ...] = (),
) -> Served:
    """``modeld serve --model MODEL`` on a new data root whose models/ links ``models``
    (file name -> file), or again on ``root`` (a restart)."""
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="mds-"))
        (root / "models").mkdir()
        for name, file in models.items():
            (root / "models" / name).symlink_to(file)
    log = root.parent / f"{root.name}.log"
    command = modeld_command(
        "serve", "--data-root", str(root), "--backend", backend, "--model", model, *args
    )
    with open(log, "a") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*wrapper, *command], stdout=out, stderr=subprocess.STDOUT, text=True
        )
    wait_for(
        "the daemon to serve",
        lambda: proc.poll() is not None or modeldconn.available(data_root=root),
        STARTUP_LIMIT_S + 30,
    )
    assert proc.poll() is None, log.read_text()
    return Served(root, proc, log, backend)


def stop_served(served: Served) -> None:
    served.client.close()
    if served.alive():
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(30)
    shutil.rmtree(served.root, ignore_errors=True)
    served.log.unlink(missing_ok=True)
