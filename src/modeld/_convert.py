"""Protobuf <-> domain conversions for the servicer; nothing here does work."""

from __future__ import annotations

from modeldconn._errors import InvalidArgument
from modeldconn._pb import modeld_pb2 as pb

from ._session_types import (
    ChatInput,
    DecodeRequest,
    DecodeStep,
    PrefixResult,
    SessionInput,
    SuffixResult,
    TextInput,
    TokenInput,
)
from ._sessions import Capacity, ResolvedConfig
from .backends._base import Capabilities
from .backends._facts import ModelFacts

__all__ = [
    "capabilities_to_pb",
    "capacity_to_pb",
    "decode_request_from_pb",
    "facts_to_pb",
    "input_from_pb",
    "prefix_to_pb",
    "resolved_to_pb",
    "step_to_pb",
    "suffix_to_pb",
]


def input_from_pb(message: pb.Input, what: str) -> SessionInput:
    kind = message.WhichOneof("kind")
    if kind == "text":
        return TextInput(message.text)
    if kind == "tokens":
        return TokenInput(tuple(message.tokens.ids))
    if kind == "chat":
        return ChatInput(
            tuple((m.role, m.content) for m in message.chat.messages),
            message.chat.add_generation_prompt,
        )
    raise InvalidArgument(f"{what} is empty: set text, tokens or chat", field=what)


def decode_request_from_pb(config: pb.DecodeConfig) -> DecodeRequest:
    def opt(name: str) -> object:
        return getattr(config, name) if config.HasField(name) else None

    return DecodeRequest.checked(
        max_tokens=opt("max_tokens"),  # type: ignore[arg-type]
        temperature=opt("temperature"),  # type: ignore[arg-type]
        top_k=opt("top_k"),  # type: ignore[arg-type]
        top_p=opt("top_p"),  # type: ignore[arg-type]
        min_p=opt("min_p"),  # type: ignore[arg-type]
        repeat_penalty=opt("repeat_penalty"),  # type: ignore[arg-type]
        repeat_last_n=opt("repeat_last_n"),  # type: ignore[arg-type]
        seed=opt("seed"),  # type: ignore[arg-type]
        stop=tuple(config.stop),
        ignore_eos=config.ignore_eos,
    )


def facts_to_pb(facts: ModelFacts) -> pb.ModelFacts:
    return pb.ModelFacts(
        name=facts.name,
        path=str(facts.path),
        digest=facts.digest,
        file_bytes=facts.file_bytes,
        architecture=facts.architecture,
        context_length=facts.context_length,
        layers=facts.layers,
        attention_heads=facts.attention_heads,
        kv_heads=facts.kv_heads,
        head_dim=facts.head_dim,
        sliding_window=facts.sliding_window,
        vocab_size=facts.vocab_size,
        chat_template=facts.chat_template,
        chat_template_source=facts.chat_template_source,
        bos_token_id=facts.bos_token_id,
        eos_token_ids=list(facts.eos_token_ids),
        add_bos=facts.add_bos,
    )


def capacity_to_pb(capacity: Capacity) -> pb.Capacity:
    return pb.Capacity(
        kv_bytes_per_token=capacity.kv_bytes_per_token,
        free_bytes=capacity.free_bytes,
        model_max_context=capacity.model_max_context,
        memory_fit_context=capacity.memory_fit_context,
        default_context=capacity.default_context,
    )


def capabilities_to_pb(capabilities: Capabilities) -> pb.Capabilities:
    return pb.Capabilities(
        token_level_truncation=capabilities.token_level_truncation,
        kv_copy_between_sessions=capabilities.kv_copy_between_sessions,
        native_state_snapshot=capabilities.native_state_snapshot,
        batched_decode=capabilities.batched_decode,
        chat_template=capabilities.chat_template,
        grammar=capabilities.grammar,
    )


def resolved_to_pb(config: ResolvedConfig) -> pb.ResolvedSessionConfig:
    return pb.ResolvedSessionConfig(
        n_ctx=config.n_ctx,
        requested_n_ctx=config.requested_n_ctx,
        model_max_context=config.model_max_context,
        memory_fit_context=config.memory_fit_context,
        n_threads=config.n_threads,
        n_batch=config.n_batch,
    )


def prefix_to_pb(result: PrefixResult) -> pb.EnsurePrefixResponse:
    return pb.EnsurePrefixResponse(
        reused=result.reused,
        prefilled=result.prefilled,
        dropped=result.dropped,
        prefix_tokens=result.prefix_tokens,
        resident=result.resident,
        available=result.available,
        prefix_hash=result.prefix_hash,
    )


def suffix_to_pb(result: SuffixResult) -> pb.PrefillSuffixResponse:
    return pb.PrefillSuffixResponse(
        suffix_tokens=result.suffix_tokens,
        prefilled=result.prefilled,
        resident=result.resident,
        available=result.available,
    )


def step_to_pb(step: DecodeStep) -> pb.DecodeChunk:
    chunk = pb.DecodeChunk(text=step.text, token_ids=list(step.token_ids))
    final = step.final
    if final is not None:
        chunk.final.CopyFrom(
            pb.DecodeFinal(
                stop_reason=final.stop_reason,
                stop_string=final.stop_string,
                usage=pb.DecodeUsage(
                    prompt_tokens=final.prompt_tokens,
                    reused_tokens=final.reused_tokens,
                    completion_tokens=final.completion_tokens,
                ),
                timings=pb.DecodeTimings(
                    prefill_ms=final.prefill_ms,
                    ttft_ms=final.ttft_ms,
                    decode_ms=final.decode_ms,
                    tokens_per_s=final.tokens_per_s,
                ),
                resident=final.resident,
                available=final.available,
            )
        )
    return chunk
