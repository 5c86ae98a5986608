"""Plan on real daemons started without a model: Gemma on llama is executable and fits with
no weights loaded (Status and the daemon's RSS say so); a Q4_K GGUF on openvino is unsupported
with the fix; `modeld plan --json` (daemon and offline) has the issue's shape."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil
import pytest
from daemons import STARTUP_LIMIT_S, Served, modeld_command, run_modeld, stop_served, wait_for
from served_models import GEMMA, GEMMA_FILE, TINY_FILE, gemma_gguf, require_backend

import modeldconn

#: the issue's keys of `modeld plan --json`
JSON_KEYS = {
    "executable",
    "backend",
    "device",
    "support_level",
    "reason",
    "fallback_reason",
    "capabilities",
    "memory",
    "max_context",
    "sessions_at_default_context",
}
#: the daemon's RSS may move this much while it plans (Gemma's weights are 253 MB)
RSS_TOLERANCE = 24 << 20


def _serve_without_model(backend: str, models: Mapping[str, Path], *args: str) -> Served:
    """`modeld serve` on a new data root linking ``models``, loading nothing at start."""
    root = Path(tempfile.mkdtemp(prefix="mdp-"))
    (root / "models").mkdir()
    for name, file in models.items():
        (root / "models" / name).symlink_to(file)
    log = root.parent / f"{root.name}.log"
    command = modeld_command("serve", "--data-root", str(root), "--backend", backend, *args)
    with open(log, "a") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
    wait_for(
        "the daemon to serve",
        lambda: proc.poll() is not None or modeldconn.available(data_root=root),
        STARTUP_LIMIT_S + 30,
    )
    assert proc.poll() is None, log.read_text()
    return Served(root, proc, log, backend)


@pytest.fixture(scope="module")
def llama() -> Iterator[Served]:
    require_backend("llama")
    # 600 MB: Gemma's default context fits, its trained one does not
    served = _serve_without_model("llama", {GEMMA_FILE: gemma_gguf()}, "--memory-limit", "600MB")
    yield served
    stop_served(served)


def _rss(served: Served) -> int:
    return int(psutil.Process(served.proc.pid).memory_info().rss)


def test_gemma_on_llama_is_executable_and_fits_with_no_weights_loaded(llama: Served) -> None:
    before = _rss(llama)
    plan = llama.client.plan(GEMMA)
    again = llama.client.plan(GEMMA, n_ctx=8192, kv_cache_type="q8_0")
    after = _rss(llama)
    assert (plan.executable, plan.fits, plan.support_level) == (True, True, "full")
    assert plan.backend == "llama" and plan.facts is not None
    assert plan.facts.architecture == "gemma3" and plan.facts.tasks[0] == "generate"
    assert plan.memory.weights_bytes == gemma_gguf().stat().st_size
    assert plan.memory.kv_bytes_per_token == 18432 and plan.n_ctx == plan.default_context == 4096
    assert plan.memory.free_bytes <= 600 * 10**6
    assert plan.capabilities.grammar and plan.capabilities.kv_copy_between_sessions
    assert not plan.loaded and not plan.memory.weights_resident
    assert again.kv_cache_type == "q8_0" and again.memory.kv_bytes_per_token == 18432 * 34 // 64
    # nothing was loaded: no model in Status, and the daemon's RSS did not take the weights
    assert not [m for m in llama.client.status().models if m.weights_loaded]
    assert abs(after - before) < RSS_TOLERANCE, (before, after)


def test_the_device_is_explained(llama: Served) -> None:
    ll = pytest.importorskip("llama_cpp")
    plan = llama.client.plan(GEMMA)
    if ll.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build offloads to a GPU: the CPU answer does not apply")
    assert (plan.device, plan.n_gpu_layers) == ("CPU", 0)
    assert plan.device_reason == "llama.cpp built without GPU offload: CPU"


def test_a_context_larger_than_fits(llama: Served) -> None:
    plan = llama.client.plan(GEMMA, n_ctx=32768)
    assert plan.executable and not plan.fits
    assert 4096 < plan.max_context < 32768
    assert plan.memory.required_bytes > plan.memory.free_bytes
    assert plan.sessions_at_default_context >= 1


def test_bad_requests_are_typed(llama: Served) -> None:
    with pytest.raises(modeldconn.ModelNotFound):
        llama.client.plan("no-such-model")
    with pytest.raises(modeldconn.InvalidArgument) as caught:
        llama.client.plan(GEMMA, n_ctx=10**6)
    assert caught.value.metadata["field"] == "n_ctx"
    with pytest.raises(modeldconn.InvalidArgument) as kv:
        llama.client.plan(GEMMA, kv_cache_type="q5_1")
    assert kv.value.metadata["field"] == "kv_cache_type"


def test_a_reference_for_the_other_backend_is_unsupported(llama: Served) -> None:
    plan = llama.client.plan(modeldconn.ModelRef(name=GEMMA, type="openvino"))
    assert plan.support_level == "unsupported" and not plan.executable
    assert "--backend openvino" in plan.fix


def test_cli_json_from_the_daemon(llama: Served) -> None:
    out = run_modeld("plan", GEMMA, "--data-root", str(llama.root), "--json")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 1  # exactly one object
    body = json.loads(out.stdout)
    assert set(body) >= JSON_KEYS
    assert set(body["memory"]) >= {"weights", "kv_per_token", "overhead", "free"}
    assert body["executable"] is True and body["offline"] is False
    assert body["support_level"] == "full" and body["memory"]["kv_per_token"] == 18432
    text = run_modeld("plan", GEMMA, "--data-root", str(llama.root))
    assert text.returncode == 0 and "from the daemon" in text.stdout and "fits" in text.stdout


def test_q4_k_gguf_on_openvino_is_unsupported_with_the_fix() -> None:
    require_backend("openvino")
    served = _serve_without_model("openvino", {GEMMA_FILE: gemma_gguf(), "tiny.gguf": TINY_FILE})
    try:
        by_file = served.client.plan(Path(GEMMA_FILE).stem)
        packaged = served.client.plan(GEMMA)  # no IR prepared here: the GGUF says why
        for plan in (by_file, packaged):
            assert plan.backend == "openvino" and not plan.executable
            assert plan.support_level == "unsupported"
            assert plan.reason.startswith("openvino cannot read a Q4_K GGUF"), plan.reason
            assert "scripts/prepare_openvino_ir.py" in plan.fix
        tiny = served.client.plan("tiny")
        assert (tiny.support_level, tiny.executable, tiny.device) == ("full", True, "CPU")
        q8 = served.client.plan("tiny", kv_cache_type="q8_0")
        assert q8.support_level == "unsupported" and "f16" in q8.reason
        assert not served.client.status().models
    finally:
        stop_served(served)


def test_cli_offline_plans_in_process() -> None:
    root = Path(tempfile.mkdtemp(prefix="mdo-"))
    try:
        (root / "models").mkdir()
        (root / "models" / GEMMA_FILE).symlink_to(gemma_gguf())
        require_backend("openvino")
        out = run_modeld("plan", GEMMA, "--data-root", str(root), "--backend", "openvino", "--json")
        assert out.returncode == 0, out.stderr
        body = json.loads(out.stdout)
        assert set(body) >= JSON_KEYS and body["offline"] is True
        assert body["support_level"] == "unsupported" and body["executable"] is False
        text = run_modeld("plan", GEMMA, "--data-root", str(root))
        assert (
            text.returncode == 0
            and "offline" in text.stdout
            and "executable       yes" in text.stdout
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
