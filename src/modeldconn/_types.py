"""Shared with the daemon: what modeldconn returns and takes, as plain frozen dataclasses.

The daemon builds :class:`PrefixResult`, :class:`DecodeFinal` and friends itself, so this module
imports no generated code: turning these into wire messages and back is ``_convert``'s job, and
the public API carries no protobuf type.

:class:`DecodeOptions` is the client's one decode-options type. ``Session.decode`` and
``generate`` (and their asyncio twins) take ``options: DecodeOptions | None`` plus any of its
fields as keywords (``session.decode(max_tokens=16, stop=["\\n"])``); the keywords replace the
named fields of ``options`` (or of the defaults), and an unknown keyword is a ``TypeError`` naming
it. The keywords are typed ``object`` on purpose: listing the fields a second time (a
``TypedDict``) would mean two places to change when a sampling field is added. Values are
checked when ``decode`` is called, before anything is sent (``InvalidArgument`` naming the field).
Adding a sampling field means adding it to ``DecodeConfig`` in the proto and to
:class:`DecodeOptions`: ``_convert.decode_config_to_pb`` is generic over the dataclass's fields
(a function there rather than a ``to_pb()`` method, so no public type hands out a protobuf
message), and a unit test fails when the two disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ._errors import InvalidArgument

__all__ = [
    "Capabilities",
    "Capacity",
    "Chat",
    "Completion",
    "DaemonStatus",
    "DecodeChunk",
    "DecodeFinal",
    "DecodeOptions",
    "Description",
    "EmbedUsage",
    "EmbeddingModelStatus",
    "Embeddings",
    "InputLike",
    "LoadedModelStatus",
    "ModelFacts",
    "ModelRef",
    "PrefixResult",
    "SessionInfo",
    "SnapshotInfo",
    "SuffixResult",
]


@dataclass(frozen=True)
class ModelRef:
    """Which model: a bare ``name`` (under the data root's models/, or packaged), or a ``path``.

    ``type`` is the backend (``llama`` | ``openvino``; empty: the daemon's own) and ``digest`` the
    file's sha256, checked when given.
    """

    name: str = ""
    type: str = ""
    digest: str = ""
    path: str = ""

    @classmethod
    def of(cls, value: ModelRef | str) -> ModelRef:
        if isinstance(value, ModelRef):
            return value
        looks_like_path = "/" in value or value.endswith(".gguf")
        return cls(path=value) if looks_like_path else cls(name=value)


@dataclass(frozen=True)
class Chat:
    """Chat messages, rendered by the daemon with the model's own template."""

    messages: Sequence[Mapping[str, str]]
    add_generation_prompt: bool = True


#: text, token ids, or chat messages (a Chat, or a list of {"role", "content"} dicts)
InputLike = str | Sequence[int] | Chat | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class DecodeOptions:
    """How to sample, field for field the wire's ``DecodeConfig``; None: the daemon's default.

    Greedy unless ``temperature`` > 0. Lists given for ``stop`` / ``stop_token_ids`` are kept as
    tuples (a bare string for ``stop`` is one stop string).
    """

    max_tokens: int | None = None  #: default 256
    temperature: float | None = None  #: unset or below 1e-4 (the limit): greedy
    top_k: int | None = None  #: default 40; 0 = off
    top_p: float | None = None  #: default 0.95; 1 = off
    min_p: float | None = None  #: default 0.05; 0 = off
    repeat_penalty: float | None = None  #: default 1.0 = off
    repeat_last_n: int | None = None  #: default 64
    seed: int | None = None  #: default: random
    stop: Sequence[str] = ()  #: stop strings, held back while they could match, never sent
    ignore_eos: bool = False
    #: stop when one of these ids is sampled: the id is streamed (as EOS is), its text is not
    stop_token_ids: Sequence[int] = ()

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.default != () or isinstance(value, tuple):
                continue  # a scalar, or a repeated field already a tuple
            if isinstance(value, str):
                value = (value,)
            try:
                object.__setattr__(self, spec.name, tuple(value))
            except TypeError:
                raise InvalidArgument(
                    f"{spec.name}={value!r}: not a sequence", field=spec.name
                ) from None


@dataclass(frozen=True)
class LoadedModelStatus:
    """A model the daemon has open (``DaemonStatus.models``)."""

    name: str
    digest: str
    path: str
    sessions: int
    weights_loaded: bool  #: false after an idle unload; the next use loads them again
    #: most sessions' decode steps one engine call computes; 0 while the weights are unloaded
    decode_batch_rows: int
    #: every batched row bit-identical to solo; false only after --decode-batch-rows asked more
    decode_batch_exact: bool


@dataclass(frozen=True)
class DaemonStatus:
    """What ``Client.status()`` answers: the daemon's identity, state, sessions and counters."""

    instance_id: str
    protocol: int
    min_protocol: int
    backend: str
    version: str
    state: str  #: standby | starting | serving | draining | fenced
    pid: int
    host: str
    endpoint: str
    uptime_s: float
    sessions_open: int
    models: tuple[LoadedModelStatus, ...]
    prefix_shares: int  #: EnsurePrefix calls that started from another session's KV
    prefix_shared_tokens: int  #: tokens so copied instead of computed
    sessions_live: int  #: holding an engine context
    sessions_parked: int  #: KV saved to RAM or disk, restored on next use
    parked_ram_bytes: int
    parked_disk_bytes: int
    parks: int
    restores: int
    max_live_sessions: int
    queue_depth: int  #: engine jobs waiting
    clients_attached: int
    sessions_reaped: int  #: closed by the idle reaper or because their client went away
    prefix_hits: int  #: EnsurePrefix calls that reused resident KV (own or shared)
    prefix_misses: int  #: EnsurePrefix calls that reused nothing
    model_loads: int  #: weights loaded (first use and after idle unloads)
    decode_calls: int  #: engine calls that computed decoded tokens
    decode_rows: int  #: tokens they computed: rows / calls > 1 when decode batches
    #: donors whose KV the engine could not copy into the receiver (another context size or
    #: layout): the receiver computed the prefix itself
    prefix_share_failures: int
    #: embedding contexts alive now (created on demand, freed when their model idles)
    embedding_contexts: int = 0
    embedding_models: tuple[EmbeddingModelStatus, ...] = ()
    #: what a session gets when it does not ask (``open_session(exact_prefix=None)``)
    exact_prefix: bool = False
    prefix_chunk: int = 0  #: C: prompts are computed in chunks [k*C, (k+1)*C)


@dataclass(frozen=True)
class EmbeddingModelStatus:
    """A model with an embedding side open (``DaemonStatus.embedding_models``)."""

    name: str
    digest: str
    contexts: int  #: embedding contexts alive now
    weights_loaded: bool  #: false once freed after idling; the next Embed loads them again
    shares_weights: bool  #: a generative model's weights, shared with its sessions


@dataclass(frozen=True)
class ModelFacts:
    name: str
    path: str
    digest: str
    file_bytes: int
    architecture: str
    context_length: int
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    sliding_window: int
    vocab_size: int
    chat_template: str
    chat_template_source: str
    bos_token_id: int
    eos_token_ids: tuple[int, ...]
    add_bos: bool
    #: "generate" (sessions) and/or "embed" (Embed)
    tasks: tuple[str, ...] = ("generate",)
    embedding_dims: int = 0  #: floats in one Embed vector; 0 when the model cannot embed
    pooling: str = ""  #: Embed's default pooling: mean | cls | last ("" when it cannot embed)


@dataclass(frozen=True)
class Capacity:
    kv_bytes_per_token: int
    free_bytes: int
    model_max_context: int
    memory_fit_context: int
    default_context: int


@dataclass(frozen=True)
class Description:
    facts: ModelFacts
    capacity: Capacity


@dataclass(frozen=True)
class Capabilities:
    token_level_truncation: bool
    kv_copy_between_sessions: bool
    native_state_snapshot: bool
    batched_decode: bool
    chat_template: bool
    grammar: bool


@dataclass(frozen=True)
class SessionInfo:
    handle: str
    n_ctx: int
    requested_n_ctx: int
    model_max_context: int
    memory_fit_context: int
    n_threads: int
    n_batch: int
    facts: ModelFacts
    capabilities: Capabilities
    #: a warm turn gives exactly a cold run's tokens (whole chunks reused; see the README)
    exact_prefix: bool = False
    prefix_chunk: int = 0  #: C: prompts are computed in chunks [k*C, (k+1)*C)


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    bytes: int
    tokens: int


@dataclass(frozen=True)
class PrefixResult:
    reused: int
    prefilled: int
    dropped: int
    prefix_tokens: int
    resident: int
    available: int
    prefix_hash: str
    #: of ``reused``, tokens whose KV was copied from another session instead of computed
    shared: int = 0


@dataclass(frozen=True)
class SuffixResult:
    suffix_tokens: int
    prefilled: int
    resident: int
    available: int


@dataclass(frozen=True)
class DecodeFinal:
    stop_reason: str  #: eos | max_tokens | stop | stop_token | cancelled | context_full
    stop_string: str
    prompt_tokens: int
    reused_tokens: int
    completion_tokens: int
    prefill_ms: float
    ttft_ms: float
    decode_ms: float
    tokens_per_s: float
    resident: int
    available: int
    stop_token: int | None = None  #: the stop token id sampled, when stop_reason is stop_token


@dataclass(frozen=True)
class DecodeChunk:
    text: str
    token_ids: tuple[int, ...] = field(default_factory=tuple)
    final: DecodeFinal | None = None  #: set on the last chunk only


@dataclass(frozen=True)
class Completion:
    """A whole Decode, collected (``Session.generate``)."""

    text: str
    token_ids: tuple[int, ...]
    final: DecodeFinal


@dataclass(frozen=True)
class EmbedUsage:
    input_tokens: tuple[int, ...]  #: tokens embedded per input (after any truncation)
    total_tokens: int
    truncated_tokens: tuple[int, ...]  #: tokens cut off per input (all 0 unless truncate)


@dataclass(frozen=True)
class Embeddings:
    """What ``embed`` answers.

    ``vectors``: one float32 vector of ``dims`` values per input, in input order: a numpy
    array of shape ``(len(inputs), dims)``, dtype float32, when numpy is importable, else a
    list of lists of floats. Unit L2 norm when ``normalized``.
    """

    vectors: Any
    dims: int
    pooling: str  #: the pooling used: mean | cls | last
    normalized: bool
    usage: EmbedUsage
    engine_calls: int  #: engine calls the batch took
