"""The modeld.v1.Modeld servicer: it only translates between messages and the session layer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from modeld.backends._base import check_generates
from modeld.lease._gate import Gate
from modeld.lease._identity import Identity, modeld_version
from modeld.models._catalog import ModelCatalog
from modeld.models._facts import ModelSpec
from modeld.models._inventory import list_models
from modeld.rpc._convert import (
    capabilities_to_pb,
    capacity_to_pb,
    decode_options_from_pb,
    embed_request_from_pb,
    embed_result_to_pb,
    facts_to_pb,
    input_from_pb,
    plan_to_pb,
    prefix_to_pb,
    rerank_request_from_pb,
    rerank_result_to_pb,
    resolved_to_pb,
    step_to_pb,
    suffix_to_pb,
)
from modeld.sessions._manager import ResolvedConfig, SessionManager
from modeld.sessions._prefill import PREFIX_CHUNK
from modeld.sessions._rerank import Reranker
from modeld.sessions._session import Session
from modeldconn._errors import InvalidArgument, SnapshotNotFound
from modeldconn._pb import modeld_pb2 as pb
from modeldconn._pb import modeld_pb2_grpc
from modeldconn._wire import CLIENT_METADATA_KEY, MIN_PROTOCOL, PROTOCOL

__all__ = ["ModeldServicer"]

#: grpc ships no type stubs; this names the servicer context for readers
Context = Any
log = logging.getLogger("modeld.rpc")


def _client_of(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_METADATA_KEY:
            return str(value)
    return ""


def _input_paths(root: str) -> dict[str, str]:
    """Where the session layer's input field names sit in a request whose Input is ``root``
    (an error without a field is about the input as a whole, e.g. one that is empty)."""
    return {"": root, "tokens": f"{root}.tokens.ids", "messages": f"{root}.chat.messages"}


_CONFIG_PATHS = {name: f"config.{name}" for name in pb.DecodeConfig.DESCRIPTOR.fields_by_name}
_DECODE_PATHS = {**_CONFIG_PATHS, **_input_paths("suffix")}
_PREFIX_PATHS = _input_paths("prefix")
_SUFFIX_PATHS = _input_paths("suffix")
_OPEN_PATHS = {"": "model", "n_ctx": "config.n_ctx", "kv_cache_type": "config.kv_cache_type"}
_MODEL_PATHS = {"": "model"}


@contextlib.contextmanager
def _fields(paths: Mapping[str, str]) -> Iterator[None]:
    """Name a refused field as its path from the request message (what BadRequest's
    FieldViolation carries): the session layer names fields as it knows them ("tokens",
    "temperature"), or not at all when the whole input is refused."""
    try:
        yield
    except InvalidArgument as error:
        field = error.metadata.get("field", "")
        error.metadata["field"] = paths.get(field, field)
        raise


def _held(request: Any) -> int | None:
    """The tape length the client says it holds, when it says one."""
    return int(request.tape_tokens) if request.HasField("tape_tokens") else None


class ModeldServicer(modeld_pb2_grpc.ModeldServicer):
    def __init__(
        self,
        *,
        identity: Identity,
        backend: str,
        gate: Gate,
        endpoint: Callable[[], str],
        sessions: SessionManager,
        exact_prefix: bool = False,
        catalog: ModelCatalog | None = None,
    ) -> None:
        #: the catalog ListModels and Status report (None: no catalog, an empty listing)
        self._catalog = catalog
        #: what a session gets when its SessionConfig leaves exact_prefix unset
        self._exact_prefix = exact_prefix
        self._identity = identity
        self._backend = backend
        self._gate = gate
        self._endpoint = endpoint
        self._sessions = sessions
        self._reranker = Reranker(sessions.embeddings)
        self._started = time.monotonic()

    async def _spec(self, ref: pb.ModelRef) -> ModelSpec:
        with _fields(_MODEL_PATHS):
            return await self._sessions.resolve(ref.name, ref.type, ref.digest, ref.path)

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        models = [
            pb.LoadedModelStatus(
                name=m.spec.facts.name,
                digest=m.spec.facts.digest,
                path=str(m.spec.facts.path),
                sessions=m.sessions,
                weights_loaded=m.engine is not None,
                decode_batch_rows=m.engine.max_decode_rows if m.engine is not None else 0,
                decode_batch_exact=m.engine is None or m.engine.decode_batch_exact,
                alias=m.spec.alias.name if m.spec.alias is not None else "",
                generation=m.generation,
                loads=m.loads,
                last_load_s=m.last_load_s,
            )
            for m in self._sessions.loaded_models()
        ]
        embedding = self._sessions.embeddings.status()
        return pb.StatusResponse(
            embedding_contexts=sum(m.contexts for m in embedding),
            embedding_models=[pb.EmbeddingModelStatus(**dataclasses.asdict(m)) for m in embedding],
            instance_id=self._identity.instance_id,
            protocol=PROTOCOL,
            min_protocol=MIN_PROTOCOL,
            backend=self._backend,
            version=modeld_version(),
            state=self._gate.phase.value,
            pid=self._identity.pid,
            host=self._identity.host,
            endpoint=self._endpoint(),
            uptime_s=time.monotonic() - self._started,
            models=models,
            queue_depth=self._sessions.queue_depth(),
            exact_prefix=self._exact_prefix,
            prefix_chunk=PREFIX_CHUNK,
            catalog_path=str(self._catalog.aliases.path) if self._catalog else "",
            catalog_error=self._catalog.aliases.error if self._catalog else "",
            catalog_aliases=len(self._catalog.aliases.aliases) if self._catalog else 0,
            **dataclasses.asdict(self._sessions.stats()),
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        catalog = self._catalog
        if catalog is None:
            return pb.ListModelsResponse()
        loaded = {m.spec.facts.digest for m in self._sessions.loaded_models() if m.engine}
        loaded |= {m.digest for m in self._sessions.embeddings.status() if m.weights_loaded}
        # hashing files not seen before takes seconds per GB: off the loop
        entries = await asyncio.to_thread(list_models, catalog, loaded_digests=loaded)
        return pb.ListModelsResponse(
            models=[pb.ModelEntry(**dataclasses.asdict(e)) for e in entries],
            catalog_path=str(catalog.aliases.path),
            catalog_error=catalog.aliases.error,
        )

    async def Plan(self, request: pb.PlanRequest, context: Context) -> pb.PlanResponse:
        ref = request.model
        with _fields(_MODEL_PATHS):  # n_ctx and kv_cache_type are top-level fields already
            plan = await self._sessions.plan(
                (ref.name, ref.type, ref.digest, ref.path), request.n_ctx, request.kv_cache_type
            )
        return plan_to_pb(plan)

    async def Describe(self, request: pb.DescribeRequest, context: Context) -> pb.DescribeResponse:
        spec = await self._spec(request.model)
        return pb.DescribeResponse(
            facts=facts_to_pb(spec.facts),
            capacity=capacity_to_pb(self._sessions.capacity(spec)),
            # only when the weights are in: Describe never loads them
            end_of_generation_ids=await self._sessions.end_of_generation_ids(spec),
        )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: Context
    ) -> pb.LoadModelResponse:
        spec = await self._spec(request.model)
        timeout_s = request.timeout_s
        if not (math.isfinite(timeout_s) and timeout_s >= 0):
            raise InvalidArgument(
                f"timeout_s {timeout_s:g}: must be 0 (the model's load timeout) or more seconds",
                field="timeout_s",
            )
        started = time.monotonic()
        if "generate" not in spec.facts.tasks:  # embedding-only: loaded by the Embed side
            already = any(
                m.digest == spec.facts.digest and m.weights_loaded
                for m in self._sessions.embeddings.status()
            )
            await self._sessions.preload(spec)
            generation = 0
        else:
            already = any(
                m.spec.key == spec.key and m.engine is not None
                for m in self._sessions.loaded_models()
            )
            generation = (await self._sessions.load_model(spec, timeout_s)).generation
        return pb.LoadModelResponse(
            facts=facts_to_pb(spec.facts),
            already_loaded=already,
            generation=generation,
            load_s=0.0 if already else time.monotonic() - started,
        )

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: Context
    ) -> pb.UnloadModelResponse:
        spec = await self._spec(request.model)
        unloaded, parked, generation = await self._sessions.unload_model(
            spec, request.park_sessions
        )
        return pb.UnloadModelResponse(
            unloaded=unloaded, sessions_parked=parked, generation=generation
        )

    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: Context
    ) -> pb.OpenSessionResponse:
        spec = await self._spec(request.model)
        check_generates(spec.facts)
        with _fields(_OPEN_PATHS):
            session, resolved = await self._sessions.open(
                spec, request.config.n_ctx, _client_of(context), request.config.kv_cache_type
            )
        return await self._opened(session, resolved, spec, request.config)

    async def _opened(
        self, session: Session, resolved: ResolvedConfig, spec: ModelSpec, asked: pb.SessionConfig
    ) -> pb.OpenSessionResponse:
        # set before the handle is returned, so before the session's first operation
        session.exact_prefix = (
            asked.exact_prefix if asked.HasField("exact_prefix") else self._exact_prefix
        )
        config = resolved_to_pb(resolved)
        config.exact_prefix, config.prefix_chunk = session.exact_prefix, PREFIX_CHUNK
        return pb.OpenSessionResponse(
            handle=session.handle,
            config=config,
            facts=facts_to_pb(spec.facts),
            capabilities=capabilities_to_pb(self._sessions.capabilities),
            end_of_generation_ids=await self._sessions.end_of_generation_ids(spec),
        )

    async def EnsurePrefix(
        self, request: pb.EnsurePrefixRequest, context: Context
    ) -> pb.EnsurePrefixResponse:
        with _fields(_PREFIX_PATHS):
            value = input_from_pb(request.prefix, "prefix")
            result = await self._sessions.ensure_prefix(request.handle, value, _held(request))
        return prefix_to_pb(result)

    async def PrefillSuffix(
        self, request: pb.PrefillSuffixRequest, context: Context
    ) -> pb.PrefillSuffixResponse:
        with _fields(_SUFFIX_PATHS):
            value = input_from_pb(request.suffix, "suffix")
            result = await self._sessions.prefill_suffix(request.handle, value, _held(request))
        return suffix_to_pb(result)

    async def Decode(
        self, request: pb.DecodeRequest, context: Context
    ) -> AsyncIterator[pb.DecodeChunk]:
        with _fields(_DECODE_PATHS):
            decode_request = decode_options_from_pb(request.config)
            suffix = input_from_pb(request.suffix, "suffix") if request.HasField("suffix") else None
            steps = self._sessions.decode(request.handle, decode_request, suffix, _held(request))
            async for step in steps:
                chunk = step_to_pb(step)
                chunk.tape_tokens = step.tape_tokens
                yield chunk

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Context
    ) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse(closed=await self._sessions.close(request.handle))

    async def Snapshot(self, request: pb.SnapshotRequest, context: Context) -> pb.SnapshotResponse:
        snapshot_id, size, tokens = await self._sessions.snapshot(request.handle)
        return pb.SnapshotResponse(snapshot_id=snapshot_id, bytes=size, tokens=tokens)

    async def Restore(self, request: pb.RestoreRequest, context: Context) -> pb.OpenSessionResponse:
        ref = request.model
        if not (ref.name or ref.path):
            recorded = self._sessions.snapshots.recorded_model_path(request.snapshot_id)
            if not recorded:
                raise SnapshotNotFound(f"no snapshot {request.snapshot_id}")
            ref = pb.ModelRef(path=recorded)
        spec = await self._spec(ref)
        check_generates(spec.facts)
        with _fields(_OPEN_PATHS):
            session, resolved = await self._sessions.restore(
                spec,
                request.snapshot_id,
                request.config.n_ctx,
                _client_of(context),
                request.config.kv_cache_type,
            )
        return await self._opened(session, resolved, spec, request.config)

    # -- session control (see ``sessions._control`` for who sees what) -------------------------

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        views = self._sessions.control.listing(_client_of(context))
        # vars(), not dataclasses.asdict(): the fields are flat, and asdict's deep copy took
        # ~36 ms of a 1,000-session reply (vars: ~6 ms)
        return pb.ListSessionsResponse(sessions=[pb.SessionInfo(**vars(v)) for v in views])

    async def ExplainSession(
        self, request: pb.ExplainSessionRequest, context: Context
    ) -> pb.ExplainSessionResponse:
        view, turns = self._sessions.control.explain(
            request.handle, _client_of(context), request.last_turns
        )
        return pb.ExplainSessionResponse(
            session=pb.SessionInfo(**vars(view)),
            turns=[pb.TurnReuse(**vars(t)) for t in turns],
        )

    async def EvictSession(
        self, request: pb.EvictSessionRequest, context: Context
    ) -> pb.EvictSessionResponse:
        view = await self._sessions.control.evict(request.handle, _client_of(context), request.to)
        return pb.EvictSessionResponse(session=pb.SessionInfo(**vars(view)))

    async def PinSession(
        self, request: pb.PinSessionRequest, context: Context
    ) -> pb.PinSessionResponse:
        view = self._sessions.control.pin(request.handle, _client_of(context), request.ttl_s)
        return pb.PinSessionResponse(session=pb.SessionInfo(**vars(view)))

    async def ForkSession(
        self, request: pb.ForkSessionRequest, context: Context
    ) -> pb.OpenSessionResponse:
        asked = request.config
        with _fields(_OPEN_PATHS):
            session, resolved = await self._sessions.control.fork(
                request.handle,
                _client_of(context),
                request.at_tokens if request.HasField("at_tokens") else None,
                asked.n_ctx,
                asked.exact_prefix if asked.HasField("exact_prefix") else None,
                asked.kv_cache_type,
            )
        config = pb.SessionConfig()
        config.CopyFrom(asked)
        config.exact_prefix = session.exact_prefix  # the source's, unless asked otherwise
        return await self._opened(session, resolved, session.model.spec, config)

    async def Attach(
        self, request: pb.AttachRequest, context: Context
    ) -> AsyncIterator[pb.AttachEvent]:
        client_id = uuid.uuid4().hex
        self._sessions.attach(client_id, request.client_name)
        try:
            yield pb.AttachEvent(client_id=client_id)
            await asyncio.Event().wait()  # until the client goes (cancelled) or we stop
        finally:
            closed = self._sessions.detach(client_id)
            if closed:
                log.info(
                    "client %s (%s) went away: closed %d sessions",
                    client_id,
                    request.client_name or "unnamed",
                    closed,
                )

    async def Tokenize(self, request: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        model = await self._sessions.model_for(
            request.handle, await self._spec_unless_handle(request.handle, request.model)
        )
        ids = await self._sessions.tokenize(model, request.text, request.add_special)
        return pb.TokenizeResponse(ids=ids)

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: Context
    ) -> pb.DetokenizeResponse:
        model = await self._sessions.model_for(
            request.handle, await self._spec_unless_handle(request.handle, request.model)
        )
        return pb.DetokenizeResponse(text=await self._sessions.detokenize(model, list(request.ids)))

    async def _spec_unless_handle(self, handle: str, ref: pb.ModelRef) -> ModelSpec | None:
        if handle:
            return None
        if not (ref.name or ref.path):
            raise InvalidArgument("name a session handle or a model", field="model")
        return await self._spec(ref)

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        spec = await self._spec(request.model)
        value = embed_request_from_pb(request)
        return embed_result_to_pb(await self._sessions.embed(spec, value))

    async def Rerank(self, request: pb.RerankRequest, context: Context) -> pb.RerankResponse:
        spec = await self._spec(request.model)
        result = await self._reranker.rerank(spec, rerank_request_from_pb(request))
        return rerank_result_to_pb(result)
