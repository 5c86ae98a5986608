"""One :class:`Call` per verb of the Modeld service: the request to send and how to read replies.

Free of I/O: ``Client`` and ``AsyncClient`` (and their sessions) build the same ``Call`` here
and differ only in how they wait for it. With ``_convert``, this is the client's one door to the
generated code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from ._convert import (
    checked_text,
    daemon_status_from_pb,
    decode_chunk_from_pb,
    decode_config_to_pb,
    description_from_pb,
    embed_inputs_to_pb,
    embeddings_from_pb,
    input_to_pb,
    model_list_from_pb,
    model_load_from_pb,
    model_ref_to_pb,
    model_unload_from_pb,
    plan_from_pb,
    prefix_result_from_pb,
    rerank_documents_to_pb,
    reranking_from_pb,
    session_explanation_from_pb,
    session_info_from_pb,
    session_listing_from_pb,
    snapshot_info_from_pb,
    suffix_result_from_pb,
    with_tools,
)
from ._errors import InvalidArgument
from ._pb import modeld_pb2 as pb
from ._pb import modeld_pb2_grpc
from ._types import (
    DaemonStatus,
    DecodeChunk,
    DecodeOptions,
    Description,
    Embeddings,
    InputLike,
    ModelList,
    ModelLoad,
    ModelRef,
    ModelUnload,
    Plan,
    PrefixResult,
    Reranking,
    SessionExplanation,
    SessionInfo,
    SessionListing,
    SnapshotInfo,
    SuffixResult,
)

__all__ = [
    "Call",
    "attach",
    "close_session",
    "decode",
    "describe",
    "detokenize",
    "embed",
    "ensure_prefix",
    "instance_of",
    "list_models",
    "load_model",
    "open_session",
    "plan",
    "prefill_suffix",
    "rerank",
    "restore",
    "snapshot",
    "status",
    "stub",
    "tokenize",
    "unload_model",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One RPC to make: unary, or a server stream whose every message ``parse`` reads."""

    method: str  #: the Modeld method
    request: Message
    parse: Callable[[Any], T]
    #: the instance a session lives on; "" for calls any leader may answer. Calls tied to an
    #: instance are never moved to another leader.
    instance: str = ""
    #: carries our Attach id: the session it opens closes when this client goes away
    attach: bool = False


def stub(channel: Any) -> Any:
    """The Modeld stub on ``channel`` (sync or asyncio)."""
    return modeld_pb2_grpc.ModeldStub(channel)  # type: ignore[no-untyped-call]


def instance_of(handle: str) -> str:
    """The daemon instance a session handle names (``<instance>/<session>``)."""
    return handle.rpartition("/")[0]


def attach() -> Call[str]:
    """The lifeline stream; its first event is our client id."""
    request = pb.AttachRequest(client_name=f"{os.path.basename(sys.argv[0])} pid {os.getpid()}")
    return Call("Attach", request, lambda event: str(event.client_id))


def status() -> Call[DaemonStatus]:
    return Call("Status", pb.StatusRequest(), daemon_status_from_pb)


def describe(model: ModelRef | str) -> Call[Description]:
    return Call("Describe", pb.DescribeRequest(model=model_ref_to_pb(model)), description_from_pb)


def plan(model: ModelRef | str, n_ctx: int, kv_cache_type: str) -> Call[Plan]:
    request = pb.PlanRequest(model=model_ref_to_pb(model), n_ctx=n_ctx, kv_cache_type=kv_cache_type)
    return Call("Plan", request, plan_from_pb)


def list_models() -> Call[ModelList]:
    return Call("ListModels", pb.ListModelsRequest(), model_list_from_pb)


def load_model(model: ModelRef | str, timeout_s: float) -> Call[ModelLoad]:
    request = pb.LoadModelRequest(model=model_ref_to_pb(model), timeout_s=timeout_s)
    return Call("LoadModel", request, model_load_from_pb)


def unload_model(model: ModelRef | str, park_sessions: bool) -> Call[ModelUnload]:
    request = pb.UnloadModelRequest(model=model_ref_to_pb(model), park_sessions=park_sessions)
    return Call("UnloadModel", request, model_unload_from_pb)


def _session_config(
    n_ctx: int, exact_prefix: bool | None, kv_cache_type: str = ""
) -> pb.SessionConfig:
    """None leaves exact_prefix unset: the daemon's default applies. kv_cache_type "": the
    alias's, else f16 (a restore: the snapshot's own)."""
    config = pb.SessionConfig(n_ctx=n_ctx, kv_cache_type=kv_cache_type)
    if exact_prefix is not None:
        config.exact_prefix = exact_prefix
    return config


def open_session(
    model: ModelRef | str, n_ctx: int, exact_prefix: bool | None = None, kv_cache_type: str = ""
) -> Call[SessionInfo]:
    request = pb.OpenSessionRequest(
        model=model_ref_to_pb(model), config=_session_config(n_ctx, exact_prefix, kv_cache_type)
    )
    return Call("OpenSession", request, session_info_from_pb, attach=True)


def restore(
    snapshot_id: str,
    model: ModelRef | str | None,
    n_ctx: int,
    exact_prefix: bool | None = None,
    kv_cache_type: str = "",
) -> Call[SessionInfo]:
    request = pb.RestoreRequest(
        snapshot_id=snapshot_id, config=_session_config(n_ctx, exact_prefix, kv_cache_type)
    )
    if model is not None:
        request.model.CopyFrom(model_ref_to_pb(model))
    return Call("Restore", request, session_info_from_pb, attach=True)


def tokenize(
    text: str, add_special: bool, *, model: ModelRef | str | None = None, handle: str = ""
) -> Call[list[int]]:
    """By a model's tokenizer, or (``handle``) by a session's."""
    text = checked_text(text, "text")  # a lone surrogate is refused typed, not by protobuf
    request = pb.TokenizeRequest(handle=handle, text=text, add_special=add_special)
    if model is not None:
        request.model.CopyFrom(model_ref_to_pb(model))
    return Call("Tokenize", request, lambda r: list(r.ids), instance=instance_of(handle))


def detokenize(
    ids: Sequence[int], *, model: ModelRef | str | None = None, handle: str = ""
) -> Call[str]:
    request = pb.DetokenizeRequest(handle=handle, ids=list(ids))
    if model is not None:
        request.model.CopyFrom(model_ref_to_pb(model))
    return Call("Detokenize", request, lambda r: str(r.text), instance=instance_of(handle))


# ``tape_tokens``: the tape length the client holds, sent after a Decode stream it abandoned
# (see ``_client.TapeClaim``); None sends nothing and the daemon keeps the tape as it is.


def ensure_prefix(
    handle: str, prefix: InputLike, tape_tokens: int | None = None
) -> Call[PrefixResult]:
    request = pb.EnsurePrefixRequest(
        handle=handle, prefix=input_to_pb(prefix), tape_tokens=tape_tokens
    )
    return Call("EnsurePrefix", request, prefix_result_from_pb, instance=instance_of(handle))


def prefill_suffix(
    handle: str, suffix: InputLike, tape_tokens: int | None = None
) -> Call[SuffixResult]:
    request = pb.PrefillSuffixRequest(
        handle=handle, suffix=input_to_pb(suffix), tape_tokens=tape_tokens
    )
    return Call("PrefillSuffix", request, suffix_result_from_pb, instance=instance_of(handle))


def _taped_chunk(message: pb.DecodeChunk) -> tuple[DecodeChunk, int]:
    return decode_chunk_from_pb(message), int(message.tape_tokens)


def decode(
    handle: str, options: DecodeOptions, suffix: InputLike | None, tape_tokens: int | None = None
) -> Call[tuple[DecodeChunk, int]]:
    """A server stream of (chunk, the tape's length once its tokens are on it); the options are
    checked here, before anything is sent.

    A chat ``suffix`` without tools gets ``options.tools`` (so that the template renders
    them), and options without tools get a chat suffix's (so that the Decode may call them).
    """
    options, suffix = with_tools(options, suffix)
    request = pb.DecodeRequest(
        handle=handle, config=decode_config_to_pb(options), tape_tokens=tape_tokens
    )
    if suffix is not None:
        request.suffix.CopyFrom(input_to_pb(suffix))
    return Call("Decode", request, _taped_chunk, instance=instance_of(handle))


def snapshot(handle: str) -> Call[SnapshotInfo]:
    request = pb.SnapshotRequest(handle=handle)
    return Call("Snapshot", request, snapshot_info_from_pb, instance=instance_of(handle))


def close_session(handle: str) -> Call[bool]:
    request = pb.CloseSessionRequest(handle=handle)
    return Call("CloseSession", request, lambda r: bool(r.closed), instance=instance_of(handle))


def embed(
    model: ModelRef | str,
    inputs: Sequence[str | Sequence[int]],
    *,
    normalize: bool = True,
    truncate: bool = False,
    pooling: str = "",
) -> Call[Embeddings]:
    request = pb.EmbedRequest(
        model=model_ref_to_pb(model),
        inputs=embed_inputs_to_pb(inputs),
        normalize=normalize,
        truncate=truncate,
        pooling=pooling,
    )
    return Call("Embed", request, embeddings_from_pb)


def rerank(
    model: ModelRef | str,
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None = None,
    truncate: bool = False,
) -> Call[Reranking]:
    request = pb.RerankRequest(
        model=model_ref_to_pb(model),
        query=query,
        documents=rerank_documents_to_pb(query, documents),
        truncate=truncate,
    )
    if top_n is not None:
        request.top_n = top_n
    return Call("Rerank", request, reranking_from_pb)


# Session control. Who sees what (the daemon decides): a call that names this client (its
# Attach id, sent as ``x-modeld-client``) sees and controls only the sessions this client
# opened; another client's session is PermissionDenied. A call that names no client is the
# operator's and sees every session (``operator=True`` on the client methods).

#: where ``evict_session`` may put a session's KV ("drop": free it, keep the tape)
EVICT_TIERS = ("ram", "disk", "drop")

# ``named``: the call carries this client's Attach id (it sees only its own sessions); False:
# the operator's call (every session).


def list_sessions(named: bool) -> Call[list[SessionListing]]:
    return Call(
        "ListSessions",
        pb.ListSessionsRequest(),
        lambda r: [session_listing_from_pb(s) for s in r.sessions],
        attach=named,
    )


def explain_session(handle: str, last_turns: int, named: bool) -> Call[SessionExplanation]:
    if last_turns < 0:
        raise InvalidArgument(f"last_turns must be >= 0, not {last_turns}", field="last_turns")
    request = pb.ExplainSessionRequest(handle=handle, last_turns=last_turns)
    return Call(
        "ExplainSession",
        request,
        session_explanation_from_pb,
        instance=instance_of(handle),
        attach=named,
    )


def evict_session(handle: str, to: str, named: bool) -> Call[SessionListing]:
    if to not in EVICT_TIERS:
        raise InvalidArgument(f"to must be one of {', '.join(EVICT_TIERS)}, not {to!r}", field="to")
    request = pb.EvictSessionRequest(handle=handle, to=to)
    return Call(
        "EvictSession",
        request,
        lambda r: session_listing_from_pb(r.session),
        instance=instance_of(handle),
        attach=named,
    )


def pin_session(handle: str, ttl_s: float, named: bool) -> Call[SessionListing]:
    request = pb.PinSessionRequest(handle=handle, ttl_s=ttl_s)
    return Call(
        "PinSession",
        request,
        lambda r: session_listing_from_pb(r.session),
        instance=instance_of(handle),
        attach=named,
    )


def fork_session(
    handle: str,
    at_tokens: int | None,
    n_ctx: int,
    exact_prefix: bool | None,
    named: bool,
    kv_cache_type: str = "",
) -> Call[SessionInfo]:
    """The fork belongs to this client when ``named`` (it closes when this client goes, like
    any session it opens), else to nobody. "" / 0 / None: the source's."""
    config = pb.SessionConfig(n_ctx=n_ctx, kv_cache_type=kv_cache_type)
    if exact_prefix is not None:
        config.exact_prefix = exact_prefix
    request = pb.ForkSessionRequest(handle=handle, config=config)
    if at_tokens is not None:
        if at_tokens < 0:
            raise InvalidArgument(f"at_tokens must be >= 0, not {at_tokens}", field="at_tokens")
        request.at_tokens = at_tokens
    return Call(
        "ForkSession",
        request,
        session_info_from_pb,
        instance=instance_of(handle),
        attach=named,
    )
