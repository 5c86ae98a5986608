"""The plan: whether and how this daemon would run a model, computed without loading weights.

From the facts a header gives (``ModelFacts``, and the GGUF's tensor table where it matters),
the backend served, what memory is free and the requested context and KV cache type: the
support level, the device, the memory arithmetic and the contexts that fit. Pure apart from
device discovery (``_devices``), which callers (and tests) may pass in instead.

Memory, in bytes, for one session of ``n_ctx`` tokens:
``required = weights (unless resident) + kv_bytes_per_token x n_ctx + overhead``, where
``overhead`` is one context's compute buffers (``overhead_bytes``, calibrated against llama.cpp
contexts' measured RSS growth; see the README). ``max_context`` is the largest ``n_ctx`` whose
``required`` fits what is free (capped at the trained context);
``sessions_at_default_context`` counts sessions of the default context after the weights and
one context's overhead (sessions share contexts, see ``backends.llama._lane``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modeld.models._aliases import KV_CACHE_TYPES
from modeld.models._capacity import DEFAULT_N_CTX
from modeld.models._catalog import PACKAGED_MODELS, ModelCatalog
from modeld.models._devices import (
    DeviceChoice,
    LlamaDevices,
    fit_gpu_layers,
    llama_devices,
    openvino_available_devices,
    openvino_device,
)
from modeld.models._facts import ModelFacts, ModelSpec, facts_from_gguf
from modeld.models._gguf import GgufError, read_gguf_metadata
from modeld.models._gguf_tensors import read_gguf_tensors
from modeldconn._errors import BackendMismatch, InvalidArgument, ModelNotFound, UnsupportedFeature
from modeldconn._types import Capabilities, Plan, PlanMemory
from modeldconn._types import ModelFacts as WireFacts

__all__ = [
    "IR_FIX",
    "OPENVINO_GGUF_ARCHITECTURES",
    "OPENVINO_GGUF_TYPES",
    "Served",
    "Support",
    "llama_gpu_layers",
    "overhead_bytes",
    "plan_model",
    "plan_reference",
]

#: the tensor types openvino-genai's GGUF reader takes (openvino-genai 2026.4: its loader
#: dequantizes Q4_0, Q4_1 and Q8_0 and reads float tensors; any other type fails the load)
OPENVINO_GGUF_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")
#: the architectures it builds a model for from a GGUF (../shared/models.md, tried here)
OPENVINO_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")
IR_FIX = "prepare an IR with scripts/prepare_openvino_ir.py"
#: llama_ftype (``general.file_type``) names, for saying what kind of GGUF a file is
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}  # fmt: skip
#: overhead model (see overhead_bytes): fixed part, activation widths per batch token, and
#: logits rows one context keeps (one per sequence: backends.llama SEQUENCES_PER_CONTEXT)
_BASE_OVERHEAD = 2 << 20
_ACTIVATION_WIDTHS = 18
_LOGIT_ROWS = 4
_N_BATCH = 512
#: what an embedding-only model can do with sessions: nothing (it serves Embed/Rerank only)
_NO_SESSIONS = Capabilities(
    token_level_truncation=False,
    kv_copy_between_sessions=False,
    native_state_snapshot=False,
    batched_decode=False,
    chat_template=False,
    grammar=False,
)


@dataclass(frozen=True)
class Served:
    """What a daemon serves with: its backend, that backend's capabilities and, for openvino,
    the device ``modeld serve --device`` asked for ("" = CPU)."""

    backend: str
    capabilities: Capabilities
    device: str = ""
    #: the backend's ``check_kv_cache_type(facts, kv_cache_type)`` (raises UnsupportedFeature
    #: with the reason), so the plan refuses what OpenSession would; None: the plan's own rule
    check_kv: Callable[[ModelFacts, str], None] | None = None


@dataclass(frozen=True)
class Support:
    level: str = "full"  #: "full" | "partial" | "unsupported"
    reason: str = ""
    fix: str = ""


def overhead_bytes(facts: ModelFacts, n_ctx: int) -> int:
    """One context's compute buffers, bytes: 2 MiB + n_batch x hidden x 4 B x 18 (activations)
    + 4 x vocab x 4 B (a logits row per sequence), with n_batch = min(512, n_ctx).

    Calibrated on llama.cpp contexts of modeld's lane shape (4 sequences, n_batch 512) after a
    512-token decode: tiny-qwen2 measured 4.3 MiB (formula 4.3), Gemma 3 270M 28.4 MiB (28.5).
    """
    n_batch = max(1, min(_N_BATCH, n_ctx or _N_BATCH))
    # the hidden size (openvino's facts of a generative model carry no embedding_dims)
    hidden = facts.embedding_dims or facts.attention_heads * facts.head_dim
    activations = n_batch * hidden * 4 * _ACTIVATION_WIDTHS
    return _BASE_OVERHEAD + activations + _LOGIT_ROWS * facts.vocab_size * 4


def _gguf_kind(meta: dict[str, object]) -> str:
    kind = meta.get("general.file_type")
    return _FILE_TYPES.get(kind, f"file type {kind}") if isinstance(kind, int) else "unknown"


def openvino_gguf_support(facts: ModelFacts) -> Support:
    """Whether openvino-genai can build a model from the GGUF at ``facts.path``: its tensor
    types and its architecture (OPENVINO_GGUF_TYPES, OPENVINO_GGUF_ARCHITECTURES)."""
    try:
        meta = read_gguf_metadata(facts.path)
        by_type = read_gguf_tensors(facts.path).bytes_by_type()
    except (GgufError, OSError) as exc:
        return Support("unsupported", f"openvino cannot read {facts.path}: {exc}", IR_FIX)
    fix = f"{IR_FIX}, or serve the GGUF on the llama backend"
    unread = [name for name in by_type if name not in OPENVINO_GGUF_TYPES]
    if unread:
        kind = _gguf_kind(meta)
        # Q4_K_M, Q4_K_S -> Q4_K: the family people call a GGUF by
        family = kind.rsplit("_", 1)[0] if "_K_" in kind else kind
        return Support(
            "unsupported",
            f"openvino cannot read a {family} GGUF: this file ({kind}) holds "
            f"{', '.join(unread)} tensors; openvino-genai's GGUF reader takes "
            f"{', '.join(OPENVINO_GGUF_TYPES)} only",
            fix,
        )
    if facts.architecture not in OPENVINO_GGUF_ARCHITECTURES:
        return Support(
            "unsupported",
            f"openvino cannot read a {facts.architecture} GGUF: openvino-genai builds "
            f"{', '.join(OPENVINO_GGUF_ARCHITECTURES)} models from GGUF files only",
            fix,
        )
    return Support()


def _kv_support(served: Served, facts: ModelFacts, kv_cache_type: str) -> Support:
    fix = "use kv_cache_type f16, or serve the model on the llama backend"
    if served.check_kv is not None:
        try:
            served.check_kv(facts, kv_cache_type)
        except UnsupportedFeature as exc:
            return Support("unsupported", exc.message, fix if kv_cache_type != "f16" else "")
        return Support()
    if served.backend == "openvino" and kv_cache_type != "f16":
        return Support(
            "unsupported",
            f"kv_cache_type {kv_cache_type} is a llama.cpp cache type: the openvino backend "
            "keeps its KV in f16 only",
            fix,
        )
    return Support()


def _check_kv_type(kv_cache_type: str) -> str:
    if kv_cache_type not in KV_CACHE_TYPES:
        raise InvalidArgument(
            f"kv_cache_type {kv_cache_type!r}: choose one of {', '.join(KV_CACHE_TYPES)}",
            field="kv_cache_type",
        )
    return kv_cache_type


def _default_context(spec: ModelSpec) -> int:
    model_max = spec.facts.context_length or DEFAULT_N_CTX
    wanted = spec.alias.n_ctx if spec.alias and spec.alias.n_ctx else DEFAULT_N_CTX
    return min(wanted, model_max)


def llama_gpu_layers(spec: ModelSpec, devices: LlamaDevices | None = None) -> DeviceChoice:
    """The llama backend's device and ``n_gpu_layers`` for ``spec``, fitted at the model's
    default context (what a load uses: sessions of other sizes come later). ``devices``: what
    llama.cpp offers (None: discovered now)."""
    devices = devices if devices is not None else llama_devices()
    facts = spec.facts
    override = spec.alias.n_gpu_layers if spec.alias else None
    if not devices.gpu_offload or not devices.gpus or override is not None:
        blocks: list[int] = [0] * facts.layers  # not needed for the answer: no header read
        rest = 0
    else:
        tensors = read_gguf_tensors(facts.path)
        blocks = tensors.block_bytes(facts.layers)
        outputs = [t.bytes for t in tensors.tensors if t.name.startswith("output.")]
        # tied embeddings (no output.weight): the output layer reads token_embd
        rest = sum(outputs) or sum(
            t.bytes for t in tensors.tensors if t.name == "token_embd.weight"
        )
    n_ctx = _default_context(spec)
    return fit_gpu_layers(
        devices,
        block_bytes=blocks,
        output_bytes=rest,
        kv_bytes_per_token=facts.kv_bytes_per_token_at(
            spec.alias.kv_cache_type if spec.alias else ""
        ),
        n_ctx=n_ctx,
        overhead_bytes=overhead_bytes(facts, n_ctx),
        override=override,
    )


def _device(
    spec: ModelSpec,
    served: Served,
    llama: LlamaDevices | None,
    openvino_devices: Sequence[str] | None,
) -> DeviceChoice:
    if served.backend == "llama":
        return llama_gpu_layers(spec, llama)
    requested = spec.alias.device if spec.alias and spec.alias.device else served.device
    available = openvino_devices if openvino_devices is not None else openvino_available_devices()
    return openvino_device(requested, available)


def plan_model(
    spec: ModelSpec,
    served: Served,
    *,
    free_bytes: int,
    weights_resident: bool,
    n_ctx: int = 0,
    kv_cache_type: str = "",
    llama: LlamaDevices | None = None,
    openvino_devices: Sequence[str] | None = None,
) -> Plan:
    """The plan for a resolved model on ``served``, with ``free_bytes`` that modeld may still
    spend (weights not counted again when ``weights_resident``). ``n_ctx`` 0: the default
    context (the alias's, else DEFAULT_N_CTX, capped at the trained context); ``kv_cache_type``
    "": the alias's, else f16. ``llama`` / ``openvino_devices``: device discovery's answers
    (None: discovered now).

    :raises InvalidArgument: ``n_ctx`` over the model's trained context (field ``n_ctx``), or
        an unknown ``kv_cache_type`` (field ``kv_cache_type``).
    """
    facts = spec.facts
    alias_kv = spec.alias.kv_cache_type if spec.alias else ""
    kv_type = _check_kv_type(kv_cache_type or alias_kv or "f16")
    model_max = facts.context_length or DEFAULT_N_CTX
    if n_ctx > model_max:
        raise InvalidArgument(
            f"n_ctx {n_ctx} exceeds the model's trained context {model_max}",
            field="n_ctx",
            model_max_context=model_max,
        )
    default = _default_context(spec)
    n_ctx = n_ctx or default
    generates = "generate" in facts.tasks

    support = _kv_support(served, facts, kv_type)
    if served.backend == "openvino" and not facts.path.is_dir() and support.level == "full":
        support = openvino_gguf_support(facts)
    device = _device(spec, served, llama, openvino_devices)

    # an encoder keeps no KV between calls, and a model that cannot generate has no sessions
    per_token = facts.kv_bytes_per_token_at(kv_type) if generates else 0
    overhead = overhead_bytes(facts, n_ctx)
    pending = 0 if weights_resident else facts.file_bytes
    room = free_bytes - pending - overhead
    required = pending + per_token * n_ctx + overhead
    if not generates:
        max_context = model_max if room >= 0 else 0
        sessions = 0
    else:
        max_context = min(model_max, max(0, room) // max(1, per_token))
        sessions = max(0, room) // max(1, per_token * default)
    reason, fix = support.reason, support.fix
    executable = support.level != "unsupported" and max_context > 0
    if support.level != "unsupported" and not executable:
        reason = (
            f"the weights ({pending / 1e6:.0f} MB) and one context's buffers "
            f"({overhead / 1e6:.0f} MB) do not fit the {free_bytes / 1e6:.0f} MB free"
        )
        fix = "free memory, unload another model, or raise --memory-limit"
    return Plan(
        executable=executable,
        backend=served.backend,
        device=device.device,
        device_reason=device.reason,
        support_level=support.level,
        reason=reason,
        fallback_reason=device.fallback_reason,
        fix=fix,
        capabilities=served.capabilities if generates else _NO_SESSIONS,
        memory=PlanMemory(
            weights_bytes=facts.file_bytes,
            kv_bytes_per_token=per_token,
            overhead_bytes=overhead,
            free_bytes=free_bytes,
            required_bytes=required,
            weights_resident=weights_resident,
        ),
        max_context=max_context,
        sessions_at_default_context=sessions,
        default_context=default,
        n_ctx=n_ctx,
        fits=required <= free_bytes,
        n_gpu_layers=device.n_gpu_layers,
        kv_cache_type=kv_type,
        alias=spec.alias.name if spec.alias else "",
        facts=_wire_facts(facts),
        loaded=weights_resident,
    )


def _wire_facts(facts: ModelFacts) -> WireFacts:
    """The client's ModelFacts (the wire's shape) for the daemon's."""
    names = {f.name for f in dataclasses.fields(WireFacts)}
    values = {k: v for k, v in dataclasses.asdict(facts).items() if k in names}
    return WireFacts(**{**values, "path": str(facts.path)})


def _unsupported(served: Served, reason: str, fix: str, kv_cache_type: str) -> Plan:
    """A plan for a model whose facts could not be read on this backend's grounds."""
    return Plan(
        executable=False,
        backend=served.backend,
        device="",
        device_reason="",
        support_level="unsupported",
        reason=reason,
        fallback_reason="",
        fix=fix,
        capabilities=served.capabilities,
        memory=PlanMemory(0, 0, 0, 0, 0, False),
        max_context=0,
        sessions_at_default_context=0,
        default_context=0,
        n_ctx=0,
        fits=False,
        n_gpu_layers=0,
        kv_cache_type=kv_cache_type or "f16",
        alias="",
        facts=None,
        loaded=False,
    )


def plan_reference(
    catalog: ModelCatalog,
    ref: tuple[str, str, str, str],
    served: Served,
    memory: Callable[[ModelSpec], tuple[int, bool]],
    *,
    n_ctx: int = 0,
    kv_cache_type: str = "",
    llama: LlamaDevices | None = None,
    openvino_devices: Sequence[str] | None = None,
) -> Plan:
    """The plan for ``ref`` (name, type, digest, path, as a ModelRef names a model), resolved
    by ``catalog``; ``memory(spec)`` answers (free bytes, weights resident) for it.

    Where resolution refuses on this backend's grounds, the plan answers instead, unsupported
    with the reason and the fix: a reference typed for the other backend, or a packaged model
    whose openvino IR was never prepared (the plan then reads the packaged GGUF, when it is
    there, to say why openvino cannot take it).

    :raises RemoteError: model_not_found, model_path_forbidden, digest_mismatch,
        model_load_failed, invalid_argument, as resolution does.
    """
    name, type_, digest, path = ref
    if kv_cache_type:
        _check_kv_type(kv_cache_type)
    try:
        spec = catalog.resolve(name, type_, digest, path)
    except BackendMismatch as exc:
        wanted = exc.metadata.get("requested", type_)
        return _unsupported(
            served,
            f"the model is for the {wanted} backend; this daemon serves {served.backend}",
            f"serve it with `modeld serve --backend {wanted}`",
            kv_cache_type,
        )
    except ModelNotFound:
        packaged = PACKAGED_MODELS.get(name)
        if served.backend != "openvino" or path or packaged is None:
            raise
        gguf = catalog.models_dir / packaged.file_name
        if not gguf.is_file():
            return _unsupported(
                served,
                f"{name} on openvino is an IR converted offline, and none is prepared",
                f"{IR_FIX} --models {catalog.models_dir}",
                kv_cache_type,
            )
        facts = facts_from_gguf(gguf, name=name, digest="")
        spec = ModelSpec(facts)
    free, resident = memory(spec)
    return plan_model(
        spec,
        served,
        free_bytes=free,
        weights_resident=resident,
        n_ctx=n_ctx,
        kv_cache_type=kv_cache_type,
        llama=llama,
        openvino_devices=openvino_devices,
    )
