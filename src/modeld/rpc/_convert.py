"""Protobuf <-> domain conversions for the servicer; nothing here does work."""

from __future__ import annotations

import dataclasses

from modeld.chat._types import Message, ToolCall, ToolDefinition
from modeld.models._facts import ModelFacts
from modeld.sessions._embeddings import EmbedRequest, EmbedResult
from modeld.sessions._manager import ResolvedConfig
from modeld.sessions._rerank import RerankRequest, RerankResult
from modeld.sessions._types import (
    ChatInput,
    DecodeOptions,
    DecodeStep,
    SessionInput,
    TextInput,
    TokenInput,
)
from modeld.structured._formats import ResponseFormat
from modeldconn._errors import InvalidArgument
from modeldconn._pb import modeld_pb2 as pb
from modeldconn._types import Capabilities, Capacity, Plan, PrefixResult, SuffixResult

__all__ = [
    "capabilities_to_pb",
    "capacity_to_pb",
    "decode_options_from_pb",
    "embed_request_from_pb",
    "embed_result_to_pb",
    "facts_to_pb",
    "input_from_pb",
    "plan_to_pb",
    "prefix_to_pb",
    "rerank_request_from_pb",
    "rerank_result_to_pb",
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
        chat = message.chat
        return ChatInput(
            messages=tuple(
                Message(
                    role=m.role,
                    content=m.content,
                    tool_calls=tuple(
                        ToolCall(c.id, c.name, c.arguments, c.index) for c in m.tool_calls
                    ),
                    tool_call_id=m.tool_call_id,
                    name=m.name,
                    thinking=m.thinking,
                )
                for m in chat.messages
            ),
            add_generation_prompt=chat.add_generation_prompt,
            tools=tuple(ToolDefinition(t.name, t.description, t.parameters) for t in chat.tools),
            enable_thinking=(chat.enable_thinking if chat.HasField("enable_thinking") else None),
        )
    raise InvalidArgument(f"{what} is empty: set text, tokens or chat", field=what)


def decode_options_from_pb(config: pb.DecodeConfig) -> DecodeOptions:
    """Every field the client set, by name (unset optional scalars take the defaults).

    :raises InvalidArgument: a value outside its field's rule, naming the field."""
    values: dict[str, object] = {}
    for fd, value in config.ListFields():
        if fd.name == "response_format":
            kind = value.WhichOneof("kind")
            text = "" if kind == "json_object" else getattr(value, kind)
            if kind == "json_object" and not value.json_object:
                continue  # false: no format
            values[fd.name] = ResponseFormat(kind, text)
        elif fd.name == "tools":
            values[fd.name] = tuple(
                ToolDefinition(t.name, t.description, t.parameters) for t in value
            )
        elif fd.name == "logit_bias":
            values[fd.name] = tuple(sorted(value.items()))
        elif isinstance(value, (bool, int, float, str)):
            values[fd.name] = value
        else:  # repeated fields arrive as containers: a plain tuple crosses into the dataclass
            values[fd.name] = tuple(value)
    return DecodeOptions.from_fields(values)


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
        tasks=list(facts.tasks),
        embedding_dims=facts.embedding_dims,
        pooling=facts.pooling,
    )


def capacity_to_pb(capacity: Capacity) -> pb.Capacity:
    return pb.Capacity(**dataclasses.asdict(capacity))


def capabilities_to_pb(capabilities: Capabilities) -> pb.Capabilities:
    return pb.Capabilities(**dataclasses.asdict(capabilities))


def plan_to_pb(plan: Plan) -> pb.PlanResponse:
    nested = ("capabilities", "memory", "facts")
    reply = pb.PlanResponse(
        **{f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.name not in nested},
        capabilities=capabilities_to_pb(plan.capabilities),
        memory=pb.PlanMemory(**dataclasses.asdict(plan.memory)),
    )
    if plan.facts is not None:  # absent: the header could not be read on this backend
        reply.facts.CopyFrom(pb.ModelFacts(**dataclasses.asdict(plan.facts)))
    return reply


def resolved_to_pb(config: ResolvedConfig) -> pb.ResolvedSessionConfig:
    return pb.ResolvedSessionConfig(**dataclasses.asdict(config))


def prefix_to_pb(result: PrefixResult) -> pb.EnsurePrefixResponse:
    return pb.EnsurePrefixResponse(**dataclasses.asdict(result))


def suffix_to_pb(result: SuffixResult) -> pb.PrefillSuffixResponse:
    return pb.PrefillSuffixResponse(**dataclasses.asdict(result))


def step_to_pb(step: DecodeStep) -> pb.DecodeChunk:
    chunk = pb.DecodeChunk(
        text=step.text,
        token_ids=list(step.token_ids),
        thinking=step.thinking,
        tool_calls=[
            pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments, index=c.index)
            for c in step.tool_calls
        ],
        logprobs=[
            pb.TokenLogprob(
                id=p.id,
                logprob=p.logprob,
                piece=p.piece,
                top=[pb.TopLogprob(id=t.id, logprob=t.logprob, piece=t.piece) for t in p.top],
            )
            for p in step.logprobs
        ],
    )
    final = step.final
    if final is not None:
        chunk.final.CopyFrom(
            pb.DecodeFinal(
                stop_reason=final.stop_reason,
                stop_string=final.stop_string,
                stop_token=final.stop_token,
                usage=pb.DecodeUsage(
                    prompt_tokens=final.prompt_tokens,
                    reused_tokens=final.reused_tokens,
                    completion_tokens=final.completion_tokens,
                    thinking_tokens=final.thinking_tokens,
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


def embed_request_from_pb(request: pb.EmbedRequest) -> EmbedRequest:
    """:raises InvalidArgument: an input with neither text nor tokens (field ``inputs[i]``)."""
    inputs: list[str | tuple[int, ...]] = []
    for i, item in enumerate(request.inputs):
        kind = item.WhichOneof("kind")
        if kind == "text":
            inputs.append(item.text)
        elif kind == "tokens":
            inputs.append(tuple(item.tokens.ids))
        else:
            raise InvalidArgument(f"inputs[{i}] is empty: set text or tokens", field=f"inputs[{i}]")
    return EmbedRequest(
        inputs=tuple(inputs),
        normalize=request.normalize if request.HasField("normalize") else True,
        truncate=request.truncate,
        pooling=request.pooling,
    )


def embed_result_to_pb(result: EmbedResult) -> pb.EmbedResponse:
    usage = result.usage
    return pb.EmbedResponse(
        dims=int(result.vectors.shape[1]),
        values=result.vectors.reshape(-1).tolist(),
        pooling=result.pooling,
        normalized=result.normalized,
        usage=pb.EmbedUsage(
            input_tokens=list(usage.input_tokens),
            total_tokens=usage.total_tokens,
            truncated_tokens=list(usage.truncated_tokens),
        ),
        engine_calls=result.engine_calls,
    )


def rerank_request_from_pb(request: pb.RerankRequest) -> RerankRequest:
    return RerankRequest(
        query=request.query,
        documents=tuple(request.documents),
        top_n=request.top_n if request.HasField("top_n") else 0,
        truncate=request.truncate,
    )


def rerank_result_to_pb(result: RerankResult) -> pb.RerankResponse:
    usage = result.usage
    return pb.RerankResponse(
        scores=result.scores.tolist(),
        order=list(result.order),
        method=result.method,
        usage=pb.RerankUsage(
            input_tokens=list(usage.input_tokens),
            total_tokens=usage.total_tokens,
            truncated_tokens=list(usage.truncated_tokens),
        ),
    )
