"""Dial the leader and drive sessions, blocking: ``Client`` and ``Session``.

    import modeldconn

    with modeldconn.open_session("gemma3-270m") as session:
        session.ensure_prefix("You are a terse assistant.\\n")
        session.prefill_suffix("Q: what is 2+2?\\nA:")
        for chunk in session.decode(max_tokens=16):
            print(chunk.text, end="")

Requests, replies, metadata and retries come from ``_client`` and ``_requests``; this module
only waits (threads and blocking gRPC). ``_async`` is its asyncio twin, method for method.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from . import _requests as rq
from ._client import ClientBase, Collector, Retry, SessionBase, decode_options
from ._dataroot import resolve_data_root
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

__all__ = ["Client", "Session", "describe", "open_session"]

T = TypeVar("T")


class Client(ClientBase):
    """A connection to the daemon of one data root (thread-safe)."""

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
        """:param wait_ready_s: how long a call waits for a daemon that is still starting.
        :param auth_token: for a daemon started with --auth-token-file (default:
            ``$MODELD_AUTH_TOKEN``, else ``<data root>/auth.token`` when present).
        :param tls_ca: PEM file of the CA that signed a TLS daemon's certificate (default:
            ``$MODELD_TLS_CA``, else ``<data root>/tls-ca.pem``, else the system's roots).
        :param endpoint: a remote daemon's ``HOST:PORT``, dialled directly (no lease read, no
            redial to another leader); ``tls`` says whether it speaks TLS."""
        super().__init__(
            data_root=data_root,
            timeout_s=timeout_s,
            wait_ready_s=wait_ready_s,
            auth_token=auth_token,
            tls_ca=tls_ca,
            endpoint=endpoint,
            tls=tls,
        )
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self._attach_lock = threading.Lock()

    def _stub(self, target: tuple[str, str]) -> Any:
        with self._lock:
            channel = self._channels.get(target)
            if channel is None:
                for old in self._channels.values():
                    old.close()  # a new leader: the old instance will not answer again
                self._channels = {target: self._open_channel(target[0])}
                channel = self._channels[target]
        return rq.stub(channel)

    def _attach(self, target: tuple[str, str]) -> str:
        """Our Attach id on ``target``, opening the lifeline stream on first use. Sessions
        opened with it close when this client goes away (closed, crashed, killed)."""
        with self._attach_lock:
            if target not in self._attached:
                call = rq.attach()
                # no deadline: the stream lives as long as this client
                stream = self._stub(target).Attach(call.request, metadata=self._metadata(target[1]))
                try:
                    client_id = call.parse(next(stream))
                except grpc.RpcError as exc:
                    raise error_from_rpc(exc) from exc
                self._attached[target] = (client_id, stream)
            return self._attached[target][0]

    def _unary(self, call: rq.Call[T]) -> T:
        target = self._leader()
        retry = Retry(self, call.instance)
        while True:
            try:
                client_id = self._attach(target) if call.attach else ""
                method = getattr(self._stub(target), call.method)
                return call.parse(
                    method(call.request, **self._call_kwargs(call, target, client_id))
                )
            except (grpc.RpcError, RemoteError) as exc:
                target = retry.after(exc, target)
                time.sleep(retry.pause_s)

    def _stream(self, call: rq.Call[T]) -> Generator[T, None, None]:
        """The replies of a server stream; leaving early cancels it. Not retried."""
        target = self._leader()
        stream = getattr(self._stub(target), call.method)(
            call.request, **self._call_kwargs(call, target)
        )
        try:
            for message in stream:
                yield call.parse(message)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            stream.cancel()

    def status(self) -> DaemonStatus:
        """The daemon's identity, state, sessions, models and counters."""
        return self._unary(rq.status())

    def load_model(self, model: ModelRef | str, *, timeout_s: float = 0.0) -> ModelLoad:
        """Load the model's weights now (once, however many ask at the same time); a model
        already loaded answers at once (``already_loaded``). ``timeout_s`` > 0 is this load's
        timeout (0: the alias's ``load_timeout_s``, else the daemon's ``--load-timeout``).

        :raises ModelLoadTimeout: not loaded in time; nothing of the attempt stays resident.
        :raises ModelLoadFailed: the backend cannot load the file.
        :raises Overloaded: ``--max-loaded-models`` are resident and none is idle to unload.
        :raises InsufficientMemory: the weights do not fit ``--memory-limit`` (with the sums).
        """
        return self._unary(rq.load_model(model, timeout_s))

    def unload_model(self, model: ModelRef | str, *, park_sessions: bool = False) -> ModelUnload:
        """Free the model's weights. With ``park_sessions`` its live sessions park first (each
        restores, loading the weights again, on its next use); without it the unload is
        refused while any of them holds live KV.

        :raises ModelInUse: live sessions and not ``park_sessions``.
        :raises Overloaded: an operation runs on one of its sessions; retry shortly.
        """
        return self._unary(rq.unload_model(model, park_sessions))

    def describe(self, model: ModelRef | str) -> Description:
        """Facts read from the model file's header (no weights loaded), and what fits."""
        return self._unary(rq.describe(model))

    def plan(self, model: ModelRef | str, n_ctx: int = 0, kv_cache_type: str = "") -> Plan:
        """Whether and how the daemon would run ``model``, with no weights loaded: support
        level (with the reason and the fix), device, capabilities, the memory arithmetic and
        the contexts that fit. ``n_ctx`` 0: the default context; ``kv_cache_type`` "": the
        alias's, else f16.

        :raises RemoteError: model_not_found, invalid_argument (n_ctx over the trained
            context, an unknown kv_cache_type), ... as Describe.
        """
        return self._unary(rq.plan(model, n_ctx, kv_cache_type))

    def list_models(self) -> ModelList:
        """Every catalog alias and every GGUF file and IR directory under the daemon's model
        roots (aliases first): size, digest, architecture, tasks, backend, loaded or not."""
        return self._unary(rq.list_models())

    def open_session(
        self,
        model: ModelRef | str,
        *,
        n_ctx: int = 0,
        exact_prefix: bool | None = None,
        kv_cache_type: str = "",
    ) -> Session:
        """``exact_prefix``: None takes the daemon's default (``status().exact_prefix``).
        ``kv_cache_type``: "f16" | "q8_0" | "q4_0" (llama); "" takes the catalog alias's, else
        f16."""
        call = rq.open_session(model, n_ctx, exact_prefix, kv_cache_type)
        return Session(self, self._unary(call))

    def restore(
        self,
        snapshot_id: str,
        model: ModelRef | str | None = None,
        *,
        n_ctx: int = 0,
        exact_prefix: bool | None = None,
        kv_cache_type: str = "",
    ) -> Session:
        """A new session from a snapshot (by default on the model it was taken on), its KV of
        the snapshot's type (``kv_cache_type`` "": any; another type is snapshot_mismatch)."""
        call = rq.restore(snapshot_id, model, n_ctx, exact_prefix, kv_cache_type)
        return Session(self, self._unary(call))

    # -- session control: ``operator=True`` sends no client id and sees every session; else
    # the call names this client, which sees and controls only the sessions it opened

    def list_sessions(self, *, operator: bool = False) -> list[SessionListing]:
        """The sessions this client opened (``operator``: every session), in opening order."""
        return self._unary(rq.list_sessions(not operator))

    def explain_session(
        self, handle: str, last_turns: int = 0, *, operator: bool = False
    ) -> SessionExplanation:
        """A session and its last ``last_turns`` turns' reuse (0: all the daemon keeps, 32).

        :raises SessionNotFound: unknown or closed. :raises PermissionDenied: another
            client's session."""
        return self._unary(rq.explain_session(handle, last_turns, not operator))

    def evict_session(self, handle: str, to: str, *, operator: bool = False) -> SessionListing:
        """Park a session's KV in ``to`` ("ram" | "disk") now, or "drop" it (the tape stays;
        its next turn recomputes it, giving the same tokens).

        :raises InvalidArgument: another ``to``. :raises SessionBusy: an operation runs on it.
        :raises Overloaded: (``ParkingFull``) the tier cannot take it; ``why`` says which
            limit. :raises SessionNotFound / PermissionDenied: as :meth:`explain_session`."""
        return self._unary(rq.evict_session(handle, to, not operator))

    def pin_session(self, handle: str, ttl_s: float, *, operator: bool = False) -> SessionListing:
        """Exempt a session from idle parking and idle closing for ``ttl_s`` seconds (0
        unpins): for an agent's pause between turns.

        :raises InvalidArgument: negative ``ttl_s``. :raises SessionNotFound /
            PermissionDenied: as :meth:`explain_session`."""
        return self._unary(rq.pin_session(handle, ttl_s, not operator))

    def fork(
        self,
        handle: str,
        at_tokens: int | None = None,
        *,
        n_ctx: int = 0,
        exact_prefix: bool | None = None,
        kv_cache_type: str = "",
    ) -> Session:
        """A new session of this client from ``handle``'s first ``at_tokens`` tape tokens
        (None: all), its KV copied; the source is left as it was. ``n_ctx`` 0,
        ``exact_prefix`` None and ``kv_cache_type`` "": the source's (another KV cache type
        cannot be copied: that fork computes its tape on first use).

        :raises InvalidArgument: ``at_tokens`` past the source's tape (field ``at_tokens``).
        :raises SessionBusy / SessionNotFound / PermissionDenied: about the source."""
        call = rq.fork_session(handle, at_tokens, n_ctx, exact_prefix, True, kv_cache_type)
        return Session(self, self._unary(call))

    def tokenize(self, model: ModelRef | str, text: str, *, add_special: bool = False) -> list[int]:
        return self._unary(rq.tokenize(text, add_special, model=model))

    def detokenize(self, model: ModelRef | str, ids: Sequence[int]) -> str:
        return self._unary(rq.detokenize(ids, model=model))

    def rerank(
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
        return self._unary(call)

    def embed(
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
        return self._unary(call)

    def close(self) -> None:
        """Close the connection; the daemon closes the sessions this client opened."""
        with self._attach_lock:
            for _, stream in self._attached.values():
                stream.cancel()
            self._attached.clear()
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Session(SessionBase):
    """One session on the daemon: its KV stays resident between calls until ``close()``."""

    def __init__(self, client: Client, info: SessionInfo) -> None:
        super().__init__(info)
        self._client = client

    def ensure_prefix(self, prefix: InputLike) -> PrefixResult:
        """Make exactly ``prefix`` resident, reusing the longest common prefix already there."""
        result = self._on_tape(rq.ensure_prefix(self.handle, prefix, self._tape.to_send()))
        self._tape.answered(result.prefix_tokens)
        return result

    def prefill_suffix(self, suffix: InputLike) -> SuffixResult:
        """Append ``suffix`` to what is resident."""
        result = self._on_tape(rq.prefill_suffix(self.handle, suffix, self._tape.to_send()))
        self._tape.answered(result.resident)
        return result

    def _on_tape(self, call: rq.Call[T]) -> T:
        try:
            return self._client._unary(call)
        except RemoteError as error:
            self._tape.refused(error)
            raise

    def _taped(
        self, chunks: Generator[tuple[DecodeChunk, int], None, None]
    ) -> Iterator[DecodeChunk]:
        """The chunks, keeping count of what this client holds (see ``TapeClaim``)."""
        try:
            for chunk, tape_tokens in chunks:
                self._tape.chunk_read(tape_tokens, chunk.final is not None)
                yield chunk
        except RemoteError as error:
            self._tape.refused(error)
            raise
        finally:
            chunks.close()  # left early: cancel the call now, not when collected

    def decode(
        self,
        options: DecodeOptions | None = None,
        *,
        suffix: InputLike | None = None,
        **fields: object,
    ) -> Iterator[DecodeChunk]:
        """Stream generated chunks; the last one carries ``final``. Leaving early cancels.

        Chunks carry answer ``text``, ``thinking`` (a thinking section, split out) and
        ``tool_calls`` (complete calls, never in text); ``logprobs`` when asked.

        :param options: how to sample; keywords (``max_tokens=16``, ``stop=["\\n"]``, any field
            of :class:`DecodeOptions`: ``response_format=ResponseFormat.from_schema({...})``,
            ``tools=[...]``, ``tool_choice="required"``, ``logprobs=5``, ``logit_bias={id:
            -inf}``, ...) replace its fields. Checked now, before anything is sent.
        :param suffix: appended first, as :meth:`prefill_suffix` would, in the same round trip.
            A :class:`Chat` suffix without tools of its own gets the options' ``tools`` (so
            the template renders them); options without tools get a Chat suffix's. Tools
            rendered in the prefix are not seen here: pass them in ``tools`` as well.
        :raises InvalidArgument: a bad option (named), before anything is sent; the daemon's,
            naming the place, for a schema or grammar that does not compile.
        """
        call = rq.decode(self.handle, decode_options(options, fields), suffix, self._tape.to_send())
        self._tape.decode_started()
        return self._taped(self._client._stream(call))

    def generate(
        self,
        options: DecodeOptions | None = None,
        *,
        suffix: InputLike | None = None,
        **fields: object,
    ) -> Completion:
        """:meth:`decode` collected into one :class:`Completion`: ``text``, ``thinking``,
        ``token_ids``, ``tool_calls`` and ``logprobs`` across the chunks, and ``final``
        (``completion.stop_reason``: ``grammar_end``, ``tool_calls``, ``eos``, ...)."""
        collector = Collector()
        for chunk in self.decode(options, suffix=suffix, **fields):
            collector.add(chunk)
        return collector.completion()

    def snapshot(self) -> SnapshotInfo:
        """Persist this session in the data root; restore it with :meth:`Client.restore`."""
        return self._client._unary(rq.snapshot(self.handle))

    def fork(self, at_tokens: int | None = None, *, n_ctx: int = 0) -> Session:
        """A new session holding this one's first ``at_tokens`` tape tokens (None: all), by KV
        copy: a branch, or a rewind. This session is left as it was."""
        return self._client.fork(self.handle, at_tokens, n_ctx=n_ctx)

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        return self._client._unary(rq.tokenize(text, add_special, handle=self.handle))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._client._unary(rq.detokenize(ids, handle=self.handle))

    def close(self) -> bool:
        """Free the session (idempotent); True when it was open."""
        return self._client._unary(rq.close_session(self.handle))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # the daemon (and the session with it) may be gone already
        with contextlib.suppress(RemoteError):
            self.close()


_default_clients: dict[str, Client] = {}
_default_lock = threading.Lock()


def _default_client() -> Client:
    root = str(resolve_data_root())
    with _default_lock:
        client = _default_clients.get(root)
        if client is None:
            client = _default_clients[root] = Client(data_root=root)
        return client


def describe(model: ModelRef | str) -> Description:
    """Facts about a model, read by the daemon from the file's header (no weights loaded)."""
    return _default_client().describe(model)


def open_session(
    model: ModelRef | str,
    *,
    n_ctx: int = 0,
    exact_prefix: bool | None = None,
    kv_cache_type: str = "",
) -> Session:
    """Open a session on the daemon of this process's data root (see :func:`set_data_root`)."""
    return _default_client().open_session(
        model, n_ctx=n_ctx, exact_prefix=exact_prefix, kv_cache_type=kv_cache_type
    )


def embed(
    model: ModelRef | str,
    inputs: Sequence[str | Sequence[int]],
    *,
    normalize: bool = True,
    truncate: bool = False,
    pooling: str = "",
) -> Embeddings:
    """``Client.embed`` on the daemon of this process's data root (asyncio:
    ``AsyncClient.embed``)."""
    return _default_client().embed(
        model, inputs, normalize=normalize, truncate=truncate, pooling=pooling
    )


def rerank(
    model: ModelRef | str,
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None = None,
    truncate: bool = False,
) -> Reranking:
    """``Client.rerank`` on the daemon of this process's data root (asyncio:
    ``AsyncClient.rerank``)."""
    return _default_client().rerank(model, query, documents, top_n=top_n, truncate=truncate)
