"""The plan's arithmetic and choices on real model headers with made-up memory and devices:
contexts and sessions that fit, KV cache types, n_gpu_layers fitting, openvino's device and
what its GGUF reader can take. Nothing is loaded."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from served_models import gemma_gguf

from modeld.models._aliases import Alias
from modeld.models._devices import (
    GPU_RESERVE_BYTES,
    NO_GPU_OFFLOAD,
    DeviceChoice,
    GpuDevice,
    LlamaDevices,
    fit_gpu_layers,
    openvino_device,
)
from modeld.models._facts import ModelSpec, facts_from_gguf
from modeld.models._gguf_tensors import read_gguf_tensors
from modeld.models._plan import IR_FIX, Served, overhead_bytes, plan_model
from modeldconn import Capabilities, InvalidArgument, Plan

FIXTURES = Path(__file__).parent.parent / "fixtures"
TINY = FIXTURES / "tiny-qwen2.gguf"
CAPS = Capabilities(True, True, True, True, True, True, True, True, True, True)
LLAMA = Served("llama", CAPS)
NO_GPU = LlamaDevices(gpu_offload=False)
MB = 10**6


def _spec(path: Path = TINY, alias: Alias | None = None) -> ModelSpec:
    return ModelSpec(facts_from_gguf(path, name=path.stem, digest="0" * 64), alias=alias)


def _plan(spec: ModelSpec, free: int, **kwargs: Any) -> Plan:
    options: dict[str, Any] = {"llama": NO_GPU, **kwargs}
    return plan_model(spec, LLAMA, free_bytes=free, weights_resident=False, **options)


def test_tiny_arithmetic_by_hand() -> None:
    spec = _spec()
    facts = spec.facts
    per_token = 2 * facts.layers * facts.kv_heads * facts.head_dim * 2  # K and V, f16
    overhead = overhead_bytes(facts, 2048)
    free = facts.file_bytes + overhead + 1000 * per_token + 7  # room for 1000 tokens
    plan = plan_model(spec, LLAMA, free_bytes=free, weights_resident=False, llama=NO_GPU)
    assert plan.memory.kv_bytes_per_token == per_token == 256
    assert plan.max_context == 1000
    assert plan.default_context == plan.n_ctx == 2048  # the trained context caps the default
    assert not plan.fits and plan.executable  # a smaller context would run
    assert plan.memory.required_bytes == facts.file_bytes + 2048 * per_token + overhead
    assert plan.sessions_at_default_context == 0  # 1000 tokens < one default session
    # resident weights are not counted again
    resident = plan_model(spec, LLAMA, free_bytes=free, weights_resident=True, llama=NO_GPU)
    assert resident.max_context == min(2048, 1000 + facts.file_bytes // per_token)
    assert resident.loaded and resident.memory.weights_resident


def test_sessions_at_default_context() -> None:
    spec = _spec()
    facts = spec.facts
    overhead = overhead_bytes(facts, 2048)
    free = facts.file_bytes + overhead + 5 * 2048 * 256 + 2047
    plan = plan_model(spec, LLAMA, free_bytes=free, weights_resident=False, llama=NO_GPU)
    assert plan.sessions_at_default_context == 5
    assert plan.fits and plan.max_context == 2048


def test_kv_types_shrink_the_kv_and_grow_the_context() -> None:
    spec = _spec(gemma_gguf())
    free = 600 * MB
    plans = {
        kv: plan_model(
            spec, LLAMA, free_bytes=free, weights_resident=False, llama=NO_GPU, kv_cache_type=kv
        )
        for kv in ("f16", "q8_0", "q4_0")
    }
    f16 = plans["f16"].memory.kv_bytes_per_token
    assert f16 == 18 * 1 * (256 + 256) * 2 == 18432
    assert plans["q8_0"].memory.kv_bytes_per_token == f16 * 34 // 64  # 34 B per 32 elements
    assert plans["q4_0"].memory.kv_bytes_per_token == f16 * 18 // 64
    assert plans["f16"].max_context < plans["q8_0"].max_context < plans["q4_0"].max_context
    assert {p.kv_cache_type for p in plans.values()} == {"f16", "q8_0", "q4_0"}
    with pytest.raises(InvalidArgument) as caught:
        _plan(spec, free, kv_cache_type="q5_1")
    assert caught.value.metadata["field"] == "kv_cache_type"


def test_alias_defaults_apply() -> None:
    alias = Alias(name="small", model="tiny", n_ctx=512, kv_cache_type="q8_0")
    plan = plan_model(
        _spec(alias=alias), LLAMA, free_bytes=10**9, weights_resident=False, llama=NO_GPU
    )
    assert (plan.alias, plan.n_ctx, plan.default_context, plan.kv_cache_type) == (
        "small",
        512,
        512,
        "q8_0",
    )


def test_context_over_the_trained_one_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        _plan(_spec(), 10**9, n_ctx=4096)
    assert caught.value.metadata["field"] == "n_ctx"


def test_weights_that_do_not_fit_are_not_executable() -> None:
    spec = _spec(gemma_gguf())
    plan = _plan(spec, 100 * MB)
    assert not plan.executable and plan.max_context == 0
    assert "do not fit" in plan.reason and plan.support_level == "full"


def test_overhead_matches_the_calibration() -> None:
    """The formula against the RSS growth measured for a 4-sequence lane after a 512-token
    decode (README, Plans): tiny 4.3 MiB, Gemma 28.4 MiB, within 1 MiB."""
    tiny, gemma = _spec().facts, _spec(gemma_gguf()).facts
    assert abs(overhead_bytes(tiny, 4096) - 4.3 * 2**20) < 2**20
    assert abs(overhead_bytes(gemma, 4096) - 28.4 * 2**20) < 2**20


def test_gguf_tensor_table() -> None:
    tensors = read_gguf_tensors(TINY)
    assert set(tensors.bytes_by_type()) == {"F16", "F32"}
    total = sum(t.bytes for t in tensors.tensors)
    assert total <= TINY.stat().st_size and total > 0.9 * TINY.stat().st_size
    blocks = tensors.block_bytes(2)
    assert blocks[0] == blocks[1] > 0
    gemma = read_gguf_tensors(gemma_gguf()).bytes_by_type()
    assert {"Q4_K", "Q6_K", "Q8_0"} <= set(gemma)


# -- devices ----------------------------------------------------------------------------------

BLOCKS = [100 * MB] * 10  # ten 100 MB blocks
OUT = 50 * MB


def _gpu(free: int) -> LlamaDevices:
    return LlamaDevices(True, (GpuDevice("CUDA0", "test GPU", free),))


def _fit(devices: LlamaDevices, **kwargs: Any) -> DeviceChoice:
    args: dict[str, Any] = {
        "block_bytes": BLOCKS,
        "output_bytes": OUT,
        "kv_bytes_per_token": 1000,
        "n_ctx": 10_000,  # 10 MB of KV, 1 MB per block
        "overhead_bytes": 20 * MB,
    }
    return fit_gpu_layers(devices, **{**args, **kwargs})


def test_whole_model_on_a_large_gpu() -> None:
    choice = _fit(_gpu(8 * 10**9))
    assert choice.n_gpu_layers == 11 and choice.device == "CUDA0"
    assert not choice.fallback_reason


def test_layers_shed_to_fit_a_small_gpu() -> None:
    # room for exactly three blocks with their KV (101 MB each), not the whole model
    free = GPU_RESERVE_BYTES + 20 * MB + 3 * 101 * MB + 5 * MB
    choice = _fit(_gpu(free))
    assert choice.n_gpu_layers == 3
    assert "fewer layers" in choice.fallback_reason


def test_no_room_means_cpu_never_failure() -> None:
    choice = _fit(_gpu(GPU_RESERVE_BYTES))
    assert (choice.device, choice.n_gpu_layers) == ("CPU", 0)
    assert "too little free memory" in choice.fallback_reason


def test_no_offload_build_plans_for_the_cpu() -> None:
    choice = _fit(NO_GPU)
    assert (choice.device, choice.n_gpu_layers, choice.reason) == ("CPU", 0, NO_GPU_OFFLOAD)
    no_device = _fit(LlamaDevices(True, ()))
    assert no_device.device == "CPU" and "no GPU device" in no_device.reason


def test_alias_overrides_the_fit() -> None:
    assert _fit(_gpu(GPU_RESERVE_BYTES), override=4).n_gpu_layers == 4
    assert _fit(_gpu(GPU_RESERVE_BYTES), override=-1).n_gpu_layers == 11
    assert _fit(_gpu(8 * 10**9), override=0).device == "CPU"


def test_plan_reports_the_gpu_fit() -> None:
    spec = _spec(gemma_gguf())
    plan = _plan(spec, 10**10, llama=_gpu(8 * 10**9))
    assert plan.n_gpu_layers == spec.facts.layers + 1 and plan.device == "CUDA0"


def test_openvino_device_choice() -> None:
    gpu = openvino_device("GPU", ["CPU"])
    assert gpu.device == "CPU" and "no GPU" in gpu.fallback_reason
    assert openvino_device("GPU", ["CPU", "GPU.0"]).device == "GPU"
    assert openvino_device("", ["CPU"]).device == openvino_device("cpu", ["CPU"]).device == "CPU"
    assert not openvino_device("", ["CPU"]).fallback_reason
    assert openvino_device("AUTO", ["CPU"]).device == "AUTO"


# -- support ----------------------------------------------------------------------------------

OPENVINO = Served("openvino", CAPS)


def test_openvino_refuses_a_q4_k_gguf_with_the_fix() -> None:
    plan = plan_model(
        _spec(gemma_gguf()),
        OPENVINO,
        free_bytes=10**10,
        weights_resident=False,
        openvino_devices=["CPU"],
    )
    assert plan.support_level == "unsupported" and not plan.executable
    assert plan.reason.startswith("openvino cannot read a Q4_K GGUF")
    assert plan.fix.startswith(IR_FIX)


def test_openvino_reads_the_f16_tiny_gguf_but_not_quantized_kv() -> None:
    spec = _spec()
    full = plan_model(
        spec, OPENVINO, free_bytes=10**9, weights_resident=False, openvino_devices=["CPU"]
    )
    assert (full.support_level, full.executable, full.device) == ("full", True, "CPU")
    q8 = plan_model(
        spec,
        OPENVINO,
        free_bytes=10**9,
        weights_resident=False,
        openvino_devices=["CPU"],
        kv_cache_type="q8_0",
    )
    assert q8.support_level == "unsupported" and "f16" in q8.reason and q8.fix


def test_embedding_only_model_has_no_session_capabilities() -> None:
    spec = _spec(FIXTURES / "tiny-bert-reranker.gguf")
    assert "generate" not in spec.facts.tasks
    plan = _plan(spec, 10**9)
    assert plan.executable and plan.support_level == "full"
    assert not any(dataclasses.asdict(plan.capabilities).values())
    assert plan.sessions_at_default_context == 0
    assert plan.memory.kv_bytes_per_token == 0
    assert plan.facts.tasks == spec.facts.tasks
