"""A catalog alias: one entry of ``<data root>/models.toml`` (what it names, and how to run it).

This module holds the entry's shape only; reading, validating and reloading the file is the
catalog file's job.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KV_CACHE_TYPES", "WARMUP_POLICIES", "Alias"]

#: the KV cache element types a llama session may use (K and V alike)
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
#: eager: loaded before the daemon serves; background: loaded right after it starts serving;
#: lazy: loaded on first use
WARMUP_POLICIES = ("eager", "background", "lazy")


@dataclass(frozen=True)
class Alias:
    """One alias. Zero and empty values mean "the daemon's default"."""

    name: str
    #: a file (GGUF), a directory (OpenVINO IR) or a packaged model's name (``gemma3-270m``)
    model: str
    #: the backend type that serves it ("llama" | "openvino"); "" = the daemon's own
    backend: str = ""
    #: what it is used for: "generate", "embed", "rerank" (a subset of what the model can do)
    tasks: tuple[str, ...] = ()
    n_ctx: int = 0  #: a session's default context, in tokens
    kv_cache_type: str = ""  #: KV_CACHE_TYPES; "" = f16
    threads: int = 0
    precision: str = ""  #: openvino inference precision ("f16", "f32", "bf16"); "" = device's
    device: str = ""  #: openvino: CPU | GPU | NPU | AUTO; "" = the daemon's --device
    n_gpu_layers: int | None = None  #: llama: layers to offload; None = fitted by the plan
    warmup: str = "lazy"  #: WARMUP_POLICIES
    load_timeout_s: float = 0.0  #: 0 = the daemon's default
    #: with ``warmup = "eager"``: a failed load stops the daemon's start
    required: bool = False
    #: the catalog line that defined it (for error messages)
    line: int = 0
