"""The client's wire conversions: ``_types``' dataclasses to the generated messages and back.

Generic where the names agree (a field of the dataclass is read from, or written to, the field of
the message with the same name), so a field added to both sides needs no code here; the unit
tests check that each message and its dataclass name the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
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
    ModelFacts,
    ModelRef,
    PrefixResult,
    SessionInfo,
    SnapshotInfo,
    SuffixResult,
)

__all__ = [
    "checked_text",
    "daemon_status_from_pb",
    "decode_chunk_from_pb",
    "decode_config_to_pb",
    "description_from_pb",
    "embed_inputs_to_pb",
    "embeddings_from_pb",
    "input_to_pb",
    "model_ref_to_pb",
    "prefix_result_from_pb",
    "session_info_from_pb",
    "snapshot_info_from_pb",
    "suffix_result_from_pb",
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


def input_to_pb(value: InputLike) -> pb.Input:
    """Text, token ids or chat messages as the wire's ``Input``; NULs are sent as text.

    :raises InvalidArgument: a lone surrogate in text, a role or a content (named, e.g.
        ``messages[1].content``); token ids that are not int32.
    :raises TypeError: a value that is none of the three kinds.
    """
    if isinstance(value, str):
        return pb.Input(text=checked_text(value, "text"))
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
    messages = [
        pb.ChatMessage(
            role=checked_text(m["role"], f"messages[{i}].role"),
            content=checked_text(m["content"], f"messages[{i}].content"),
        )
        for i, m in enumerate(chat.messages)
    ]
    return pb.Input(
        chat=pb.ChatMessages(messages=messages, add_generation_prompt=chat.add_generation_prompt)
    )


def decode_config_to_pb(options: DecodeOptions) -> pb.DecodeConfig:
    """Every field of ``options`` onto the ``DecodeConfig`` field of the same name: optional
    scalars only when not None, repeated fields extended. Out-of-range or mistyped values (a
    negative ``max_tokens``, a ``seed`` past 2**64) raise :class:`InvalidArgument` naming the
    field, before anything is sent."""
    config = pb.DecodeConfig()
    by_name = config.DESCRIPTOR.fields_by_name
    for spec in fields(options):
        value = getattr(options, spec.name)
        if value is None:
            continue
        try:
            if by_name[spec.name].is_repeated:
                getattr(config, spec.name).extend(value)
            else:
                setattr(config, spec.name, value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{spec.name}={value!r}: {exc}", field=spec.name) from None
    return config


def description_from_pb(reply: pb.DescribeResponse) -> Description:
    return Description(_facts(reply.facts), _by_name(reply.capacity, Capacity))


def _facts(message: pb.ModelFacts) -> ModelFacts:
    return _by_name(message, ModelFacts)


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
    )


def decode_chunk_from_pb(message: pb.DecodeChunk) -> DecodeChunk:
    final = _final(message.final) if message.HasField("final") else None
    return DecodeChunk(message.text, tuple(message.token_ids), final)


def daemon_status_from_pb(reply: pb.StatusResponse) -> DaemonStatus:
    models = tuple(_by_name(m, LoadedModelStatus) for m in reply.models)
    embedding = tuple(_by_name(m, EmbeddingModelStatus) for m in reply.embedding_models)
    return _by_name(reply, DaemonStatus, models=models, embedding_models=embedding)


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
