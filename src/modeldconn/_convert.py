"""The client's wire conversions: ``_types``' dataclasses to the generated messages and back.

Generic where the names agree (a field of the dataclass is read from, or written to, the field of
the message with the same name), so a field added to both sides needs no code here; the unit
tests check that each message and its dataclass name the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, TypeVar

from ._errors import InvalidArgument
from ._pb import modeld_pb2 as pb
from ._types import (
    Capabilities,
    Capacity,
    Chat,
    DaemonStatus,
    DecodeChunk,
    DecodeFinal,
    DecodeOptions,
    Description,
    EmbeddingModelStatus,
    Embeddings,
    EmbedUsage,
    InputLike,
    LoadedModelStatus,
    ModelEntry,
    ModelFacts,
    ModelList,
    ModelLoad,
    ModelRef,
    ModelUnload,
    Plan,
    PlanMemory,
    PrefixResult,
    Reranking,
    RerankUsage,
    ResponseFormat,
    SessionExplanation,
    SessionInfo,
    SessionListing,
    SnapshotInfo,
    SuffixResult,
    TokenLogprob,
    ToolCall,
    ToolDefinition,
    TopLogprob,
    TurnReuse,
)

__all__ = [
    "checked_text",
    "daemon_status_from_pb",
    "decode_chunk_from_pb",
    "decode_config_to_pb",
    "decode_options_from_pb",
    "description_from_pb",
    "embed_inputs_to_pb",
    "embeddings_from_pb",
    "input_to_pb",
    "model_list_from_pb",
    "model_load_from_pb",
    "model_ref_to_pb",
    "model_unload_from_pb",
    "plan_from_pb",
    "prefix_result_from_pb",
    "rerank_documents_to_pb",
    "reranking_from_pb",
    "response_format_to_pb",
    "session_explanation_from_pb",
    "session_info_from_pb",
    "session_listing_from_pb",
    "snapshot_info_from_pb",
    "suffix_result_from_pb",
    "tool_call_to_pb",
    "tool_definition_to_pb",
    "with_tools",
]

D = TypeVar("D")


def _by_name(message: Any, cls: type[D], **overrides: Any) -> D:
    """``cls`` built from the fields of ``message`` with the same names (repeated: tuples)."""
    values: dict[str, Any] = {}
    for spec in fields(cls):  # type: ignore[arg-type]
        if spec.name not in overrides:
            value = getattr(message, spec.name)
            is_repeated = not isinstance(value, str | bytes) and hasattr(value, "__len__")
            values[spec.name] = tuple(value) if is_repeated else value
    return cls(**values, **overrides)


def checked_text(value: str, field: str) -> str:
    """``value``, which a protobuf ``string`` field can carry (it must have a UTF-8 form).

    :raises InvalidArgument: ``value`` holds a lone surrogate (``"\\ud800"``), named by
        ``field`` and position; protobuf would raise ``UnicodeEncodeError`` instead.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{field} holds a lone surrogate (U+{ord(value[exc.start]):04X} at character "
            f"{exc.start}), which has no UTF-8 form",
            field=field,
        ) from None
    return value


def model_ref_to_pb(model: ModelRef | str) -> pb.ModelRef:
    ref = ModelRef.of(model)
    return pb.ModelRef(
        name=checked_text(ref.name, "model.name"),
        type=checked_text(ref.type, "model.type"),
        digest=checked_text(ref.digest, "model.digest"),
        path=checked_text(ref.path, "model.path"),
    )


def tool_definition_to_pb(tool: ToolDefinition, where: str = "tools[0]") -> pb.ToolDefinition:
    """:raises InvalidArgument: a lone surrogate in a field (named ``<where>.<field>``)."""
    return pb.ToolDefinition(
        name=checked_text(tool.name, f"{where}.name"),
        description=checked_text(tool.description, f"{where}.description"),
        parameters=checked_text(str(tool.parameters), f"{where}.parameters"),
    )


def tool_call_to_pb(call: ToolCall, where: str = "tool_calls[0]") -> pb.ToolCall:
    """:raises InvalidArgument: a lone surrogate, or an index out of uint32 (named
    ``<where>.<field>``)."""
    try:
        return pb.ToolCall(
            id=checked_text(call.id, f"{where}.id"),
            name=checked_text(call.name, f"{where}.name"),
            arguments=checked_text(str(call.arguments), f"{where}.arguments"),
            index=call.index,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{where}: {exc}", field=where) from None


def response_format_to_pb(value: ResponseFormat) -> pb.ResponseFormat:
    """The one kind set, onto the wire's oneof.

    :raises InvalidArgument: a lone surrogate in the schema, regex or grammar (named
        ``response_format.<kind>``)."""
    kind = value.kind
    if kind == "json_object":
        return pb.ResponseFormat(json_object=True)
    text = getattr(value, kind)
    if not isinstance(text, str):
        raise InvalidArgument(f"response_format.{kind}: not a str", field=f"response_format.{kind}")
    wire = pb.ResponseFormat()
    setattr(wire, kind, checked_text(text, f"response_format.{kind}"))
    return wire


def _text_of(message: Mapping[str, Any], key: str, where: str) -> str:
    """``message[key]``, "" when absent or None.

    :raises InvalidArgument: a value that is not a str, or holds a lone surrogate."""
    value = message.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(
            f"{where}.{key} is {type(value).__name__}: send a str", field=f"{where}.{key}"
        )
    return checked_text(value, f"{where}.{key}")


def _chat_message_to_pb(message: Mapping[str, Any], where: str) -> pb.ChatMessage:
    if not isinstance(message, Mapping):
        raise InvalidArgument(f"{where} is {type(message).__name__}: send a mapping", field=where)
    if not isinstance(message.get("role"), str):
        raise InvalidArgument(f"{where} has no role", field=f"{where}.role")
    calls = message.get("tool_calls") or ()
    if isinstance(calls, Mapping | ToolCall | str):
        raise InvalidArgument(
            f"{where}.tool_calls is one call: send a list of them", field=f"{where}.tool_calls"
        )
    tool_calls = []
    for j, call in enumerate(calls):
        call_where = f"{where}.tool_calls[{j}]"
        try:
            parsed = ToolCall.of(call, index=j)
        except InvalidArgument as exc:
            raise InvalidArgument(str(exc), field=call_where) from None
        tool_calls.append(tool_call_to_pb(parsed, call_where))
    return pb.ChatMessage(
        role=_text_of(message, "role", where),
        content=_text_of(message, "content", where),
        tool_calls=tool_calls,
        tool_call_id=_text_of(message, "tool_call_id", where),
        name=_text_of(message, "name", where),
        thinking=_text_of(message, "thinking", where),
    )


def _as_chat(value: InputLike) -> Chat | None:
    """``value`` as a Chat when it is one (a Chat, or a non-empty list of mappings)."""
    if isinstance(value, Chat):
        return value
    if isinstance(value, str) or not value:
        return None
    if all(isinstance(v, Mapping) for v in value):
        return Chat(value)  # type: ignore[arg-type]
    return None


def input_to_pb(value: InputLike) -> pb.Input:
    """Text, token ids or chat messages as the wire's ``Input``; NULs are sent as text.

    A chat message is a mapping: ``role``, ``content`` (None or absent: ""), and optionally
    ``tool_calls`` (:class:`ToolCall` or OpenAI-shaped mappings; arguments given as a mapping
    are ``json.dumps``'d), ``tool_call_id``, ``name`` and ``thinking``; other keys are ignored.

    :raises InvalidArgument: a lone surrogate in text, a role, a content or a tool field
        (named, e.g. ``messages[1].content`` or ``messages[2].tool_calls[0].arguments``); a
        message without a role, a field of another type; token ids that are not int32.
    :raises TypeError: a value that is none of the three kinds.
    """
    if isinstance(value, str):
        return pb.Input(text=checked_text(value, "text"))
    chat = _as_chat(value)
    if chat is None:
        try:  # protobuf checks every id is an int32, in C
            return pb.Input(tokens=pb.TokenIds(ids=value))  # type: ignore[arg-type]
        except TypeError:
            raise TypeError("input must be text, token ids, or chat messages") from None
        except ValueError as exc:
            raise InvalidArgument(f"token ids: {exc}", field="tokens") from None
    messages = [_chat_message_to_pb(m, f"messages[{i}]") for i, m in enumerate(chat.messages)]
    tools = [tool_definition_to_pb(t, f"tools[{i}]") for i, t in enumerate(chat.tools)]
    wire = pb.ChatMessages(
        messages=messages, add_generation_prompt=chat.add_generation_prompt, tools=tools
    )
    if chat.enable_thinking is not None:
        wire.enable_thinking = chat.enable_thinking
    return pb.Input(chat=wire)


def with_tools(
    options: DecodeOptions, suffix: InputLike | None
) -> tuple[DecodeOptions, InputLike | None]:
    """``options`` and a chat ``suffix``, each given the other's tools when it has none.

    ``decode``/``generate`` with ``tools`` and a chat suffix without tools: the suffix carries
    them too, so that the template renders them; a chat suffix with tools and options without:
    the Decode may call them. A suffix that is text or token ids is left as it is.
    """
    chat = _as_chat(suffix) if suffix is not None else None
    if chat is None:
        return options, suffix
    if options.tools and not chat.tools:
        return options, replace(chat, tools=tuple(options.tools))
    if chat.tools and not options.tools:
        return replace(options, tools=tuple(chat.tools)), chat
    return options, suffix


#: DecodeConfig fields that the by-name loop of decode_config_to_pb cannot set itself
_MESSAGE_OPTIONS = ("response_format", "tools", "logit_bias")


def decode_config_to_pb(options: DecodeOptions) -> pb.DecodeConfig:
    """Every field of ``options`` onto the ``DecodeConfig`` field of the same name: optional
    scalars only when not None, repeated fields extended; ``response_format`` onto its oneof,
    ``tools`` as ``ToolDefinition`` messages, ``logit_bias`` into the map. Out-of-range or
    mistyped values (a negative ``max_tokens``, a ``seed`` past 2**64, a logit_bias id that is
    not an int32) raise :class:`InvalidArgument` naming the field, before anything is sent."""
    config = pb.DecodeConfig()
    by_name = config.DESCRIPTOR.fields_by_name
    for spec in fields(options):
        value = getattr(options, spec.name)
        if value is None:
            continue
        try:
            if spec.name == "response_format":
                config.response_format.CopyFrom(response_format_to_pb(value))
            elif spec.name == "tools":
                config.tools.extend(
                    tool_definition_to_pb(t, f"tools[{i}]") for i, t in enumerate(value)
                )
            elif spec.name == "logit_bias":
                for token, bias in value:
                    if isinstance(token, bool) or isinstance(bias, bool):
                        raise TypeError(f"{token!r}: {bias!r} is not an int id: a float bias")
                    config.logit_bias[token] = bias
            elif by_name[spec.name].is_repeated:
                getattr(config, spec.name).extend(value)
            else:
                setattr(config, spec.name, value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{spec.name}={value!r}: {exc}", field=spec.name) from None
    return config


def decode_options_from_pb(config: pb.DecodeConfig) -> DecodeOptions:
    """The inverse of :func:`decode_config_to_pb` (tests, tools that log requests)."""
    values: dict[str, Any] = {}
    for spec in fields(DecodeOptions):
        descriptor = config.DESCRIPTOR.fields_by_name[spec.name]
        value = getattr(config, spec.name)
        if spec.name == "response_format":
            kind = value.WhichOneof("kind")
            values[spec.name] = (
                None if kind is None else ResponseFormat(**{kind: getattr(value, kind)})
            )
        elif spec.name == "tools":
            values[spec.name] = tuple(_by_name(t, ToolDefinition) for t in value)
        elif spec.name == "logit_bias":
            values[spec.name] = tuple(sorted(value.items()))
        elif descriptor.is_repeated:
            values[spec.name] = tuple(value)
        elif descriptor.has_presence and not config.HasField(spec.name):
            values[spec.name] = None
        else:
            values[spec.name] = value
    return DecodeOptions(**values)


def description_from_pb(reply: pb.DescribeResponse) -> Description:
    return Description(_facts(reply.facts), _by_name(reply.capacity, Capacity))


def _facts(message: pb.ModelFacts) -> ModelFacts:
    return _by_name(message, ModelFacts)


def model_load_from_pb(reply: pb.LoadModelResponse) -> ModelLoad:
    return _by_name(reply, ModelLoad, facts=_facts(reply.facts))


def model_unload_from_pb(reply: pb.UnloadModelResponse) -> ModelUnload:
    return _by_name(reply, ModelUnload)


def plan_from_pb(reply: pb.PlanResponse) -> Plan:
    return _by_name(
        reply,
        Plan,
        capabilities=_by_name(reply.capabilities, Capabilities),
        memory=_by_name(reply.memory, PlanMemory),
        facts=_facts(reply.facts) if reply.HasField("facts") else None,
    )


def session_info_from_pb(reply: pb.OpenSessionResponse) -> SessionInfo:
    c = reply.config
    return SessionInfo(
        handle=reply.handle,
        n_ctx=c.n_ctx,
        requested_n_ctx=c.requested_n_ctx,
        model_max_context=c.model_max_context,
        memory_fit_context=c.memory_fit_context,
        n_threads=c.n_threads,
        n_batch=c.n_batch,
        facts=_facts(reply.facts),
        capabilities=_by_name(reply.capabilities, Capabilities),
        exact_prefix=c.exact_prefix,
        prefix_chunk=c.prefix_chunk,
        kv_cache_type=c.kv_cache_type or "f16",
    )


def snapshot_info_from_pb(reply: pb.SnapshotResponse) -> SnapshotInfo:
    return _by_name(reply, SnapshotInfo)


def prefix_result_from_pb(reply: pb.EnsurePrefixResponse) -> PrefixResult:
    return _by_name(reply, PrefixResult)


def suffix_result_from_pb(reply: pb.PrefillSuffixResponse) -> SuffixResult:
    return _by_name(reply, SuffixResult)


def _final(m: pb.DecodeFinal) -> DecodeFinal:
    return DecodeFinal(
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
        thinking_tokens=m.usage.thinking_tokens,
    )


def _token_logprob(m: pb.TokenLogprob) -> TokenLogprob:
    top = tuple(TopLogprob(t.id, t.logprob, bytes(t.piece)) for t in m.top)
    return TokenLogprob(m.id, m.logprob, bytes(m.piece), top)


def decode_chunk_from_pb(message: pb.DecodeChunk) -> DecodeChunk:
    final = _final(message.final) if message.HasField("final") else None
    return DecodeChunk(
        message.text,
        tuple(message.token_ids),
        final,
        thinking=message.thinking,
        tool_calls=tuple(_by_name(c, ToolCall) for c in message.tool_calls),
        logprobs=tuple(_token_logprob(t) for t in message.logprobs),
    )


def daemon_status_from_pb(reply: pb.StatusResponse) -> DaemonStatus:
    models = tuple(_by_name(m, LoadedModelStatus) for m in reply.models)
    embedding = tuple(_by_name(m, EmbeddingModelStatus) for m in reply.embedding_models)
    return _by_name(reply, DaemonStatus, models=models, embedding_models=embedding)


def model_list_from_pb(reply: pb.ListModelsResponse) -> ModelList:
    models = tuple(_by_name(m, ModelEntry) for m in reply.models)
    return _by_name(reply, ModelList, models=models)


def embed_inputs_to_pb(inputs: Sequence[str | Sequence[int]]) -> list[pb.EmbedInput]:
    """Texts (str) or token id lists, in order.

    :raises InvalidArgument: a text with a lone surrogate, or an input of another type
        (field ``inputs[i]``); a lone str instead of a list of them (field ``inputs``)."""
    if isinstance(inputs, str):
        raise InvalidArgument("inputs is one str: pass a list of texts", field="inputs")
    out: list[pb.EmbedInput] = []
    for i, value in enumerate(inputs):
        if isinstance(value, str):
            out.append(pb.EmbedInput(text=checked_text(value, f"inputs[{i}]")))
        elif isinstance(value, Sequence) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in value
        ):
            out.append(pb.EmbedInput(tokens=pb.TokenIds(ids=[int(t) for t in value])))
        else:
            raise InvalidArgument(
                f"inputs[{i}] is {type(value).__name__}: send a str or a list of token ids",
                field=f"inputs[{i}]",
            )
    return out


def embeddings_from_pb(reply: pb.EmbedResponse) -> Embeddings:
    """The reply's vectors as a float32 numpy array (inputs x dims) when numpy is importable,
    else as a list of lists of floats."""
    dims = reply.dims
    values = list(reply.values)
    vectors: Any
    try:
        import numpy as np
    except ImportError:
        vectors = [values[i : i + dims] for i in range(0, len(values), dims)] if dims else []
    else:
        vectors = np.asarray(values, dtype=np.float32).reshape(-1, dims or 1)
    usage = reply.usage
    return Embeddings(
        vectors=vectors,
        dims=dims,
        pooling=reply.pooling,
        normalized=reply.normalized,
        usage=EmbedUsage(
            tuple(usage.input_tokens), usage.total_tokens, tuple(usage.truncated_tokens)
        ),
        engine_calls=reply.engine_calls,
    )


def rerank_documents_to_pb(query: str, documents: Sequence[str]) -> list[str]:
    """The documents, checked as texts (the query too).

    :raises InvalidArgument: a lone str instead of a list (field ``documents``), a document
        that is not a str or holds a lone surrogate (``documents[i]``), a bad query."""
    checked_text(query, "query")
    if isinstance(documents, str):
        raise InvalidArgument("documents is one str: pass a list of texts", field="documents")
    out: list[str] = []
    for i, value in enumerate(documents):
        if not isinstance(value, str):
            raise InvalidArgument(
                f"documents[{i}] is {type(value).__name__}: send a str", field=f"documents[{i}]"
            )
        out.append(checked_text(value, f"documents[{i}]"))
    return out


def reranking_from_pb(reply: pb.RerankResponse) -> Reranking:
    usage = reply.usage
    return Reranking(
        scores=tuple(float(x) for x in reply.scores),
        order=tuple(int(i) for i in reply.order),
        method=reply.method,
        usage=RerankUsage(
            tuple(usage.input_tokens), usage.total_tokens, tuple(usage.truncated_tokens)
        ),
    )


_LISTING_FIELDS = tuple(f.name for f in fields(SessionListing))


def session_listing_from_pb(message: pb.SessionInfo) -> SessionListing:
    # every field is a scalar: read them by name directly (``_by_name`` checks each for a
    # repeated value, which doubled the client's share of a 1,000-session listing)
    return SessionListing(**{name: getattr(message, name) for name in _LISTING_FIELDS})


def session_explanation_from_pb(reply: pb.ExplainSessionResponse) -> SessionExplanation:
    return SessionExplanation(
        session_listing_from_pb(reply.session), tuple(_by_name(t, TurnReuse) for t in reply.turns)
    )
