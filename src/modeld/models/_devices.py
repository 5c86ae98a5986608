"""Which device a model runs on, and why: discovery (what this machine has) and choice.

Discovery asks the engine libraries themselves, lazily (a plan for the other backend never
imports this one's engine): llama.cpp's ggml device registry (each GPU's free memory) and
``openvino.Core().available_devices``. The choices are pure functions of what was discovered,
so the plan, the backends' loads and the tests agree.

- llama: ``n_gpu_layers``. Without GPU offload in the llama.cpp build, or without a GPU, 0 (the
  CPU, and the plan says so). Otherwise fitted like a capacity planner: every layer (and the
  output layer) when the model fits the GPUs' free memory, else as many transformer blocks as
  fit, never a failure. A catalog alias's ``n_gpu_layers`` overrides the fit.
- openvino: ``--device CPU|GPU|NPU|AUTO`` or an alias's ``device``. A device OpenVINO does not
  see falls back to the CPU with ``fallback_reason`` (the daemon keeps serving; the plan says
  what happened) rather than refusing the model.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "GPU_RESERVE_BYTES",
    "NO_GPU_OFFLOAD",
    "OPENVINO_DEVICES",
    "DeviceChoice",
    "GpuDevice",
    "LlamaDevices",
    "fit_gpu_layers",
    "llama_devices",
    "openvino_available_devices",
    "openvino_device",
]

#: what the plan says when llama-cpp-python was built without GPU support
NO_GPU_OFFLOAD = "llama.cpp built without GPU offload: CPU"
#: what `modeld serve --device` and an alias's ``device`` accept
OPENVINO_DEVICES = ("CPU", "GPU", "NPU", "AUTO")
#: device memory a fit leaves unused: the driver's own context and fragmentation
GPU_RESERVE_BYTES = 512 << 20
#: ggml_backend_dev_type: 1 GPU, 2 integrated GPU (ggml.h); 0 is the CPU, 3 an accelerator
#: that works in host memory (BLAS, AMX), neither of which takes offloaded layers
_GGML_GPU_TYPES = (1, 2)


@dataclass(frozen=True)
class DeviceChoice:
    device: str  #: "CPU", "GPU", "NPU", "AUTO", or llama.cpp's device name ("CUDA0", ...)
    reason: str  #: why that device, in words
    fallback_reason: str = ""  #: set when the plan fell back (another device, fewer layers)
    n_gpu_layers: int = 0  #: llama: layers offloaded (blocks, plus 1 for the output layer)


@dataclass(frozen=True)
class GpuDevice:
    name: str  #: llama.cpp's name for it ("CUDA0", "Vulkan0", ...)
    description: str
    free_bytes: int


@dataclass(frozen=True)
class LlamaDevices:
    """What llama.cpp offers here: whether the build offloads at all, and its GPUs."""

    gpu_offload: bool
    gpus: tuple[GpuDevice, ...] = ()


def llama_devices() -> LlamaDevices:
    """llama.cpp's GPU offload support and its GPU devices with their free memory now.

    Returns "no offload" when llama-cpp-python is not installed.
    """
    try:
        import llama_cpp
    except ImportError:
        return LlamaDevices(gpu_offload=False)
    if not llama_cpp.llama_supports_gpu_offload():
        return LlamaDevices(gpu_offload=False)
    return LlamaDevices(gpu_offload=True, gpus=tuple(_ggml_gpus(Path(llama_cpp.__file__).parent)))


@functools.cache
def _ggml(package: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(package / "lib" / "libggml.so"))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    size = ctypes.POINTER(ctypes.c_size_t)
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size, size]
    return lib


def _ggml_gpus(package: Path) -> list[GpuDevice]:
    """ggml's registered GPU devices (the llama-cpp-python build links its backends in)."""
    try:
        lib = _ggml(package)
    except OSError:  # a build that names its library otherwise: no GPU we can measure
        return []
    found = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        if lib.ggml_backend_dev_type(device) not in _GGML_GPU_TYPES:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        found.append(
            GpuDevice(
                name=(lib.ggml_backend_dev_name(device) or b"GPU").decode(),
                description=(lib.ggml_backend_dev_description(device) or b"").decode(),
                free_bytes=free.value,
            )
        )
    return found


def fit_gpu_layers(
    devices: LlamaDevices,
    *,
    block_bytes: Sequence[int],
    output_bytes: int,
    kv_bytes_per_token: int,
    n_ctx: int,
    overhead_bytes: int,
    override: int | None = None,
) -> DeviceChoice:
    """llama.cpp's ``n_gpu_layers`` for a model whose transformer blocks weigh ``block_bytes``
    (bytes each, in order) and whose output layer weighs ``output_bytes``, with a context of
    ``n_ctx`` tokens at ``kv_bytes_per_token`` (all layers) and ``overhead_bytes`` of compute
    buffer on the device.

    llama.cpp offloads the last N blocks, and with N = blocks + 1 the output layer too. The fit
    takes every layer when they all fit the GPUs' free memory (less GPU_RESERVE_BYTES), else the
    most trailing blocks that fit (possibly none: the CPU, with ``fallback_reason``); it never
    fails. ``override`` (an alias's ``n_gpu_layers``) wins over the fit; -1 means all.
    """
    layers = len(block_bytes)
    if not devices.gpu_offload:
        reason = NO_GPU_OFFLOAD
        if override:
            reason += f" (the alias's n_gpu_layers {override} cannot apply)"
        return DeviceChoice("CPU", reason)
    if not devices.gpus:
        return DeviceChoice("CPU", "llama.cpp has GPU offload but finds no GPU device: CPU")
    name = "+".join(gpu.name for gpu in devices.gpus)
    free = sum(gpu.free_bytes for gpu in devices.gpus)
    if override is not None:
        chosen = layers + 1 if override < 0 else min(override, layers + 1)
        return DeviceChoice(
            name if chosen else "CPU",
            f"n_gpu_layers {chosen} of {layers + 1}, as the catalog alias sets",
            n_gpu_layers=chosen,
        )
    kv_per_block = -(-kv_bytes_per_token * n_ctx // max(1, layers))
    room = free - GPU_RESERVE_BYTES - overhead_bytes
    everything = sum(block_bytes) + output_bytes + kv_per_block * layers
    if everything <= room:
        return DeviceChoice(
            name,
            f"all {layers + 1} layers fit {name} ({free / 2**30:.1f} GiB free)",
            n_gpu_layers=layers + 1,
        )
    chosen, spent = 0, 0
    for size in reversed(block_bytes):  # the last blocks go first, as llama.cpp offloads
        if spent + size + kv_per_block > room:
            break
        spent += size + kv_per_block
        chosen += 1
    need = f"{everything / 2**30:.2f} GiB needed, {max(0, room) / 2**30:.2f} GiB usable"
    if chosen == 0:
        return DeviceChoice(
            "CPU",
            f"no layer fits {name}: CPU",
            fallback_reason=f"{name} has too little free memory for one layer ({need})",
        )
    return DeviceChoice(
        name,
        f"{chosen} of {layers + 1} layers fit {name}; the rest run on the CPU",
        fallback_reason=f"fewer layers offloaded: the model does not fit {name} ({need})",
        n_gpu_layers=chosen,
    )


def openvino_available_devices() -> tuple[str, ...]:
    """``openvino.Core().available_devices`` ("CPU", "GPU.0", ...); () without openvino."""
    try:
        import openvino
    except ImportError:
        return ()
    return tuple(str(name) for name in openvino.Core().available_devices)


def openvino_device(requested: str, available: Sequence[str]) -> DeviceChoice:
    """The device OpenVINO compiles on: ``requested`` (OPENVINO_DEVICES or a device OpenVINO
    names, e.g. "GPU.1"; "" = CPU) when ``available`` lists it (a bare "GPU" matches "GPU.0"),
    "AUTO" as asked (OpenVINO's AUTO plugin chooses per inference), else the CPU with
    ``fallback_reason``.
    """
    wanted = (requested or "CPU").upper()
    seen = ", ".join(available) or "none"
    if wanted == "AUTO":
        return DeviceChoice("AUTO", f"OpenVINO's AUTO plugin chooses among: {seen}")
    if wanted in available or any(name.startswith(f"{wanted}.") for name in available):
        how = "--device / the alias" if requested else "the default"
        return DeviceChoice(wanted, f"{wanted} as {how} asks (available: {seen})")
    if wanted == "CPU":  # OpenVINO without its CPU plugin: nothing better to fall back to
        return DeviceChoice("CPU", f"CPU (OpenVINO lists: {seen})")
    return DeviceChoice(
        "CPU",
        f"CPU: {wanted} is not available (OpenVINO lists: {seen})",
        fallback_reason=f"{wanted} asked for, but OpenVINO sees no {wanted}: fell back to CPU",
    )
