"""What every benchmark here shares: a daemon on a scratch data root, serving the default model."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import modeldconn

MODEL = "gemma3-270m"


def start_daemon(root: Path, *args: str) -> subprocess.Popen[bytes]:
    """`modeld serve --model gemma3-270m ARGS` on ``root``, returned once it serves."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modeld",
            "serve",
            "--data-root",
            str(root),
            "--model",
            MODEL,
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not modeldconn.available(data_root=root):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the daemon did not start")
        time.sleep(0.05)
    return proc


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
