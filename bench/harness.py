"""What every benchmark here shares: a daemon on a scratch data root, serving the default model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import modeldconn

MODEL = "gemma3-270m"
RESULTS = Path(__file__).parent / "results"
N_CTX = 4096
#: filler prose for prompts of a given length (the benchmarks cut it to token counts)
TEXT = (
    "The history of the city begins with a small settlement on the river. Farmers and traders "
    "built houses of wood and clay, and over the centuries the town grew into a busy port. "
)
SCRIPTS = Path(__file__).parent.parent / "scripts"


def save_result(name: str, result: dict[str, Any], width: int = 32) -> None:
    """Write ``bench/results/NAME.json`` and print the figures as a table."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(
            f"{key:{width}} {value:.3f}" if isinstance(value, float) else f"{key:{width}} {value}"
        )


def start_daemon(
    root: Path, *args: str, backend: str = "llama", model: str = MODEL
) -> subprocess.Popen[bytes]:
    """`modeld serve --backend BACKEND --model MODEL ARGS` on ``root``, once it serves.

    The openvino backend serves gemma3-270m as its int8 IR: converted (once per machine) by the
    project's script and linked into ``root``'s models directory.
    """
    if backend == "openvino" and model == MODEL:
        subprocess.run(
            [
                sys.executable,
                str(SCRIPTS / "prepare_openvino_ir.py"),
                "--models",
                str(root / "models"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modeld",
            "serve",
            "--data-root",
            str(root),
            "--backend",
            backend,
            "--model",
            model,
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
