"""systemd notify protocol from a real `modeld serve`: READY, WATCHDOG, STOPPING."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from daemons import modeld_command


def test_ready_watchdog_stopping(data_root: Path) -> None:
    path = data_root / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
        proc = subprocess.Popen(
            modeld_command("serve", "--data-root", str(data_root), "--lease-ttl", "1.5"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        messages: list[str] = []
        deadline = time.monotonic() + 30
        stopping_sent = False
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                messages.append(listener.recv(4096).decode())
            watchdogs = sum("WATCHDOG=1" in m for m in messages)
            if not stopping_sent and watchdogs >= 2:
                proc.send_signal(signal.SIGTERM)
                stopping_sent = True
            if any("STOPPING=1" in m for m in messages):
                break
        assert proc.wait(10) == 0
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m and "serving" in m)
    stopping = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
    pets = [i for i, m in enumerate(messages) if m == "WATCHDOG=1"]
    assert ready < pets[-1] < stopping and len(pets) >= 2
