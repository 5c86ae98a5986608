"""The asyncio twins of ``Client`` and ``Session``: ``AsyncClient`` and ``AsyncSession``.

    async with modeldconn.AsyncClient() as client:
        async with await client.open_session("gemma3-270m") as session:
            await session.ensure_prefix("Q: what is 2+2?\\nA:")
            async for chunk in session.decode(max_tokens=16):
                print(chunk.text, end="")

Method for method the same as ``_sync`` (a unit test checks the names and parameters): the
same ``_requests`` calls, the same retries; only the waiting is asyncio's. Closing the client is
``aclose()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, TypeVar

import grpc

from . import _requests as rq
from ._client import ClientBase, Collector, Retry, SessionBase, decode_options
from ._errors import RemoteError, error_from_rpc
from ._types import (
    Completion,
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

__all__ = ["AsyncClient", "AsyncSession"]

T = TypeVar("T")


class AsyncClient(ClientBase):
    """The asyncio twin of :class:`Client` (use it from one event loop)."""

    def __init__(
        self,
        *,
        data_root: str | os.PathLike[str] | None = None,
        timeout_s: float | None = None,
        wait_ready_s: float = 30.0,
        auth_token: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        tls: bool = False,
    ) -> None:
        super().__init__(
            data_root=data_root,
            timeout_s=timeout_s,
            wait_ready_s=wait_ready_s,
            auth_token=auth_token,
            tls_ca=tls_ca,
            endpoint=endpoint,
            tls=tls,
        )
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        #: guards the channel swap and the lifeline attach, as the sync twin's locks do: two
        #: coroutines must not open two channels, or two Attach streams, to one daemon
        self._channel_lock = asyncio.Lock()
        self._attach_lock = asyncio.Lock()

    async def _stub(self, target: tuple[str, str]) -> Any:
        async with self._channel_lock:
            channel = self._channels.get(target)
            if channel is None:
                old, self._channels = self._channels, {}
                for stale in old.values():
                    await stale.close()  # a new leader: the old instance will not answer again
                channel = self._channels[target] = self._open_channel(target[0], aio=True)
        return rq.stub(channel)

    async def _attach(self, target: tuple[str, str]) -> str:
        """Our Attach id on ``target``, opening the lifeline stream on first use."""
        async with self._attach_lock:
            if target not in self._attached:
                call = rq.attach()
                # no deadline: the stream lives as long as this client
                stream = (await self._stub(target)).Attach(
                    call.request, metadata=self._metadata(target[1])
                )
                try:
                    client_id = call.parse(await stream.read())
                except grpc.RpcError as exc:
                    raise error_from_rpc(exc) from exc
                self._attached[target] = (client_id, stream)
            return self._attached[target][0]

    async def _unary(self, call: rq.Call[T]) -> T:
        target = self._leader()
        retry = Retry(self, call.instance)
        while True:
            try:
                client_id = await self._attach(target) if call.attach else ""
                method = getattr(await self._stub(target), call.method)
                reply = await method(call.request, **self._call_kwargs(call, target, client_id))
                return call.parse(reply)
            except (grpc.RpcError, RemoteError) as exc:
                target = retry.after(exc, target)
                await asyncio.sleep(retry.pause_s)

    async def _stream(self, call: rq.Call[T]) -> AsyncGenerator[T, None]:
        """The replies of a server stream; leaving early cancels it. Not retried."""
        target = self._leader()
        stream = getattr(await self._stub(target), call.method)(
            call.request, **self._call_kwargs(call, target)
        )
        try:
            async for message in stream:
                yield call.parse(message)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            stream.cancel()

    async def status(self) -> DaemonStatus:
        """The daemon's identity, state, sessions, models and counters."""
        return await self._unary(rq.status())

    async def load_model(self, model: ModelRef | str, *, timeout_s: float = 0.0) -> ModelLoad:
        """Load the model's weights now (once, however many ask at the same time); a model
        already loaded answers at once (``already_loaded``). ``timeout_s`` > 0 is this load's
        timeout (0: the alias's ``load_timeout_s``, else the daemon's ``--load-timeout``).

        :raises ModelLoadTimeout: not loaded in time; nothing of the attempt stays resident.
        :raises ModelLoadFailed: the backend cannot load the file.
        :raises Overloaded: ``--max-loaded-models`` are resident and none is idle to unload.
        :raises InsufficientMemory: the weights do not fit ``--memory-limit`` (with the sums).
        """
        return await self._unary(rq.load_model(model, timeout_s))

    async def unload_model(
        self, model: ModelRef | str, *, park_sessions: bool = False
    ) -> ModelUnload:
        """Free the model's weights. With ``park_sessions`` its live sessions park first (each
        restores, loading the weights again, on its next use); without it the unload is
        refused while any of them holds live KV.

        :raises ModelInUse: live sessions and not ``park_sessions``.
        :raises Overloaded: an operation runs on one of its sessions; retry shortly.
        """
        return await self._unary(rq.unload_model(model, park_sessions))

    async def describe(self, model: ModelRef | str) -> Description:
        """Facts read from the model file's header (no weights loaded), and what fits."""
        return await self._unary(rq.describe(model))

    async def plan(self, model: ModelRef | str, n_ctx: int = 0, kv_cache_type: str = "") -> Plan:
        """See :meth:`Client.plan`."""
        return await self._unary(rq.plan(model, n_ctx, kv_cache_type))

    async def list_models(self) -> ModelList:
        """Every catalog alias and every GGUF file and IR directory under the daemon's model
        roots (aliases first): size, digest, architecture, tasks, backend, loaded or not."""
        return await self._unary(rq.list_models())

    async def open_session(
        self,
        model: ModelRef | str,
        *,
        n_ctx: int = 0,
        exact_prefix: bool | None = None,
        kv_cache_type: str = "",
    ) -> AsyncSession:
        """``exact_prefix``: None takes the daemon's default (``status().exact_prefix``).
        ``kv_cache_type``: "f16" | "q8_0" | "q4_0" (llama); "" takes the catalog alias's, else
        f16."""
        call = rq.open_session(model, n_ctx, exact_prefix, kv_cache_type)
        return AsyncSession(self, await self._unary(call))

    async def restore(
        self,
        snapshot_id: str,
        model: ModelRef | str | None = None,
        *,
        n_ctx: int = 0,
        exact_prefix: bool | None = None,
        kv_cache_type: str = "",
    ) -> AsyncSession:
        """A new session from a snapshot (by default on the model it was taken on), its KV of
        the snapshot's type (``kv_cache_type`` "": any; another type is snapshot_mismatch)."""
        call = rq.restore(snapshot_id, model, n_ctx, exact_prefix, kv_cache_type)
        return AsyncSession(self, await self._unary(call))

    # -- session control: ``operator=True`` sends no client id and sees every session; else
    # the call names this client, which sees and controls only the sessions it opened

    async def list_sessions(self, *, operator: bool = False) -> list[SessionListing]:
        """The sessions this client opened (``operator``: every session), in opening order."""
        return await self._unary(rq.list_sessions(not operator))

    async def explain_session(
        self, handle: str, last_turns: int = 0, *, operator: bool = False
    ) -> SessionExplanation:
        """A session and its last ``last_turns`` turns' reuse (0: all the daemon keeps, 32).

        :raises SessionNotFound: unknown or closed. :raises PermissionDenied: another
            client's session."""
        return await self._unary(rq.explain_session(handle, last_turns, not operator))

    async def evict_session(
        self, handle: str, to: str, *, operator: bool = False
    ) -> SessionListing:
        """Park a session's KV in ``to`` ("ram" | "disk") now, or "drop" it (the tape stays;
        its next turn recomputes it, giving the same tokens).

        :raises InvalidArgument: another ``to``. :raises SessionBusy: an operation runs on it.
        :raises Overloaded: (``ParkingFull``) the tier cannot take it; ``why`` says which
            limit. :raises SessionNotFound / PermissionDenied: as :meth:`explain_session`."""
        return await self._unary(rq.evict_session(handle, to, not operator))

    async def pin_session(
        self, handle: str, ttl_s: float, *, operator: bool = False
    ) -> SessionListing:
        """Exempt a session from idle parking and idle closing for ``ttl_s`` seconds (0
        unpins): for an agent's pause between turns.

        :raises InvalidArgument: negative ``ttl_s``. :raises SessionNotFound /
            PermissionDenied: as :meth:`explain_session`."""
        return await self._unary(rq.pin_session(handle, ttl_s, not operator))

    async def fork(
        self,
        handle: str,
        at_tokens: int | None = None,
        *,
        n_ctx: int = 0,
        exact_prefix: bool | None = None,
        kv_cache_type: str = "",
    ) -> AsyncSession:
        """A new session of this client from ``handle``'s first ``at_tokens`` tape tokens
        (None: all), its KV copied; the source is left as it was. ``n_ctx`` 0,
        ``exact_prefix`` None and ``kv_cache_type`` "": the source's (another KV cache type
        cannot be copied: that fork computes its tape on first use).

        :raises InvalidArgument: ``at_tokens`` past the source's tape (field ``at_tokens``).
        :raises SessionBusy / SessionNotFound / PermissionDenied: about the source."""
        call = rq.fork_session(handle, at_tokens, n_ctx, exact_prefix, True, kv_cache_type)
        return AsyncSession(self, await self._unary(call))

    async def tokenize(
        self, model: ModelRef | str, text: str, *, add_special: bool = False
    ) -> list[int]:
        return await self._unary(rq.tokenize(text, add_special, model=model))

    async def detokenize(self, model: ModelRef | str, ids: Sequence[int]) -> str:
        return await self._unary(rq.detokenize(ids, model=model))

    async def rerank(
        self,
        model: ModelRef | str,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        truncate: bool = False,
    ) -> Reranking:
        """One relevance score per document for ``query``, and the documents' order.

        ``result.scores``: in input order, higher is more relevant; ``result.order``: indices,
        best first (the ``top_n`` best when given); ``result.method``: "cross_encoder" (a
        reranker model: its own score for the pair) or "generative_yes_no" (a generative
        model: P(yes) normalised over {yes, no} under the documented prompt, in [0, 1]). A pair
        longer than the model takes is ``ContextOverflow`` naming the document (metadata
        ``input``), unless ``truncate`` cuts the document.

        :raises InvalidArgument: an empty query (field ``query``), no documents
            (``documents``), an empty one (``documents[i]``).
        :raises CapabilityMismatch: the model neither reranks nor generates (embedding-only).
        :raises UnsupportedFeature: this backend cannot run this cross-encoder.
        """
        call = rq.rerank(model, query, documents, top_n=top_n, truncate=truncate)
        return await self._unary(call)

    async def embed(
        self,
        model: ModelRef | str,
        inputs: Sequence[str | Sequence[int]],
        *,
        normalize: bool = True,
        truncate: bool = False,
        pooling: str = "",
    ) -> Embeddings:
        """One float32 vector per input (a text, or a list of token ids), in order.

        ``result.vectors`` is a numpy array of shape ``(len(inputs), result.dims)`` when numpy
        is importable, else a list of lists. ``normalize``: unit L2 norm (default). An input
        longer than the model takes is ``ContextOverflow`` naming it (metadata ``input``),
        unless ``truncate`` (``result.usage.truncated_tokens`` says what was cut). ``pooling``:
        "" (the model's), "mean", "cls" or "last".

        :raises InvalidArgument: no inputs, an empty one (field ``inputs[i]``), a bad pooling.
        :raises CapabilityMismatch: the model cannot embed.
        :raises UnsupportedFeature: this backend cannot pool this model.
        """
        call = rq.embed(model, inputs, normalize=normalize, truncate=truncate, pooling=pooling)
        return await self._unary(call)

    async def aclose(self) -> None:
        """Close the connection; the daemon closes the sessions this client opened."""
        async with self._attach_lock:
            for _, stream in self._attached.values():
                stream.cancel()
            self._attached.clear()
        async with self._channel_lock:
            for channel in self._channels.values():
                await channel.close()
            self._channels.clear()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncSession(SessionBase):
    """The asyncio twin of :class:`Session`."""

    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        super().__init__(info)
        self._client = client

    async def ensure_prefix(self, prefix: InputLike) -> PrefixResult:
        """Make exactly ``prefix`` resident, reusing the longest common prefix already there."""
        result = await self._on_tape(rq.ensure_prefix(self.handle, prefix, self._tape.to_send()))
        self._tape.answered(result.prefix_tokens)
        return result

    async def prefill_suffix(self, suffix: InputLike) -> SuffixResult:
        """Append ``suffix`` to what is resident."""
        result = await self._on_tape(rq.prefill_suffix(self.handle, suffix, self._tape.to_send()))
        self._tape.answered(result.resident)
        return result

    async def _on_tape(self, call: rq.Call[T]) -> T:
        try:
            return await self._client._unary(call)
        except RemoteError as error:
            self._tape.refused(error)
            raise

    async def _taped(
        self, chunks: AsyncGenerator[tuple[DecodeChunk, int], None]
    ) -> AsyncIterator[DecodeChunk]:
        """The chunks, keeping count of what this client holds (see ``TapeClaim``)."""
        try:
            async for chunk, tape_tokens in chunks:
                self._tape.chunk_read(tape_tokens, chunk.final is not None)
                yield chunk
        except RemoteError as error:
            self._tape.refused(error)
            raise
        finally:
            await chunks.aclose()  # left early: cancel the call now

    def decode(
        self,
        options: DecodeOptions | None = None,
        *,
        suffix: InputLike | None = None,
        **fields: object,
    ) -> AsyncIterator[DecodeChunk]:
        """Stream generated chunks (``async for``); the last one carries ``final``. Leaving
        early cancels. Options (``response_format``, ``tools``, ``logprobs``, ...) and the tools
        rule for a Chat ``suffix`` as for :meth:`Session.decode`, checked now."""
        call = rq.decode(self.handle, decode_options(options, fields), suffix, self._tape.to_send())
        self._tape.decode_started()
        return self._taped(self._client._stream(call))

    async def generate(
        self,
        options: DecodeOptions | None = None,
        *,
        suffix: InputLike | None = None,
        **fields: object,
    ) -> Completion:
        """:meth:`decode` collected into one :class:`Completion` (as :meth:`Session.generate`)."""
        collector = Collector()
        async for chunk in self.decode(options, suffix=suffix, **fields):
            collector.add(chunk)
        return collector.completion()

    async def snapshot(self) -> SnapshotInfo:
        """Persist this session in the data root; restore it with :meth:`AsyncClient.restore`."""
        return await self._client._unary(rq.snapshot(self.handle))

    async def fork(self, at_tokens: int | None = None, *, n_ctx: int = 0) -> AsyncSession:
        """A new session holding this one's first ``at_tokens`` tape tokens (None: all), by KV
        copy: a branch, or a rewind. This session is left as it was."""
        return await self._client.fork(self.handle, at_tokens, n_ctx=n_ctx)

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        return await self._client._unary(rq.tokenize(text, add_special, handle=self.handle))

    async def detokenize(self, ids: Sequence[int]) -> str:
        return await self._client._unary(rq.detokenize(ids, handle=self.handle))

    async def close(self) -> bool:
        """Free the session (idempotent); True when it was open."""
        return await self._client._unary(rq.close_session(self.handle))

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # the daemon (and the session with it) may be gone already
        with contextlib.suppress(RemoteError):
            await self.close()
