"""What modeldconn returns: plain frozen dataclasses, built from the wire messages in one place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import InvalidArgument
from ._pb import modeld_pb2 as pb

__all__ = [
    "Capabilities",
    "Capacity",
    "Chat",
    "DecodeChunk",
    "DecodeFinal",
    "Description",
    "InputLike",
    "ModelFacts",
    "ModelRef",
    "PrefixResult",
    "SessionInfo",
    "SnapshotInfo",
    "SuffixResult",
    "input_to_pb",
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

    def to_pb(self) -> pb.ModelRef:
        return pb.ModelRef(name=self.name, type=self.type, digest=self.digest, path=self.path)


@dataclass(frozen=True)
class Chat:
    """Chat messages, rendered by the daemon with the model's own template."""

    messages: Sequence[Mapping[str, str]]
    add_generation_prompt: bool = True


#: text, token ids, or chat messages (a Chat, or a list of {"role", "content"} dicts)
InputLike = str | Sequence[int] | Chat | Sequence[Mapping[str, str]]


def input_to_pb(value: InputLike) -> pb.Input:
    if isinstance(value, str):
        return pb.Input(text=value)
    if isinstance(value, Chat):
        chat = value
    elif value and all(isinstance(v, Mapping) for v in value):
        chat = Chat(value)  # type: ignore[arg-type]
    else:
        try:  # protobuf checks every id is an int32, in C
            return pb.Input(tokens=pb.TokenIds(ids=value))  # type: ignore[arg-type]
        except TypeError:
            raise TypeError("input must be text, token ids, or chat messages") from None
        except ValueError as exc:
            raise InvalidArgument(f"token ids: {exc}", field="tokens") from None
    messages = [pb.ChatMessage(role=m["role"], content=m["content"]) for m in chat.messages]
    return pb.Input(
        chat=pb.ChatMessages(messages=messages, add_generation_prompt=chat.add_generation_prompt)
    )


def _fields(message: Any, cls: type) -> dict[str, Any]:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {name: getattr(message, name) for name in names}


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

    @classmethod
    def from_pb(cls, message: pb.ModelFacts) -> ModelFacts:
        values = _fields(message, cls)
        values["eos_token_ids"] = tuple(message.eos_token_ids)
        return cls(**values)


@dataclass(frozen=True)
class Capacity:
    kv_bytes_per_token: int
    free_bytes: int
    model_max_context: int
    memory_fit_context: int
    default_context: int

    @classmethod
    def from_pb(cls, message: pb.Capacity) -> Capacity:
        return cls(**_fields(message, cls))


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

    @classmethod
    def from_pb(cls, message: pb.Capabilities) -> Capabilities:
        return cls(**_fields(message, cls))


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

    @classmethod
    def from_pb(cls, message: pb.OpenSessionResponse) -> SessionInfo:
        c = message.config
        return cls(
            handle=message.handle,
            n_ctx=c.n_ctx,
            requested_n_ctx=c.requested_n_ctx,
            model_max_context=c.model_max_context,
            memory_fit_context=c.memory_fit_context,
            n_threads=c.n_threads,
            n_batch=c.n_batch,
            facts=ModelFacts.from_pb(message.facts),
            capabilities=Capabilities.from_pb(message.capabilities),
        )


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    bytes: int
    tokens: int

    @classmethod
    def from_pb(cls, message: pb.SnapshotResponse) -> SnapshotInfo:
        return cls(**_fields(message, cls))


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

    @classmethod
    def from_pb(cls, message: pb.EnsurePrefixResponse) -> PrefixResult:
        return cls(**_fields(message, cls))


@dataclass(frozen=True)
class SuffixResult:
    suffix_tokens: int
    prefilled: int
    resident: int
    available: int

    @classmethod
    def from_pb(cls, message: pb.PrefillSuffixResponse) -> SuffixResult:
        return cls(**_fields(message, cls))


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

    @classmethod
    def from_pb(cls, m: pb.DecodeFinal) -> DecodeFinal:
        return cls(
            stop_reason=m.stop_reason,
            stop_string=m.stop_string,
            prompt_tokens=m.usage.prompt_tokens,
            reused_tokens=m.usage.reused_tokens,
            completion_tokens=m.usage.completion_tokens,
            prefill_ms=m.timings.prefill_ms,
            ttft_ms=m.timings.ttft_ms,
            decode_ms=m.timings.decode_ms,
            tokens_per_s=m.timings.tokens_per_s,
            resident=m.resident,
            available=m.available,
            stop_token=m.stop_token if m.HasField("stop_token") else None,
        )


@dataclass(frozen=True)
class DecodeChunk:
    text: str
    token_ids: tuple[int, ...] = field(default_factory=tuple)
    final: DecodeFinal | None = None  #: set on the last chunk only

    @classmethod
    def from_pb(cls, message: pb.DecodeChunk) -> DecodeChunk:
        final = DecodeFinal.from_pb(message.final) if message.HasField("final") else None
        return cls(message.text, tuple(message.token_ids), final)
