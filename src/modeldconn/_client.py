"""Dial the leader and drive sessions: ``Client`` / ``Session`` and their asyncio twins.

    import modeldconn

    with modeldconn.open_session("gemma3-270m") as session:
        session.ensure_prefix("You are a terse assistant.\\n")
        session.prefill_suffix("Q: what is 2+2?\\nA:")
        for chunk in session.decode(max_tokens=16):
            print(chunk.text, end="")

Everything free of I/O (which daemon to dial, metadata, request building, error mapping) lives
in ``_ClientBase``; ``Client`` and ``AsyncClient`` differ only in how they wait. One channel is
kept per (endpoint, instance id) and replaced when the lease names another leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ._dataroot import resolve_data_root
from ._errors import (
    InvalidArgument,
    NotReady,
    Overloaded,
    RemoteError,
    StaleFence,
    Unavailable,
    error_from_rpc,
)
from ._pb import modeld_pb2 as pb
from ._pb import modeld_pb2_grpc
from ._probe import probe
from ._tls import find_tls_ca, open_channel
from ._types import (
    DecodeChunk,
    DecodeFinal,
    Description,
    InputLike,
    ModelFacts,
    ModelRef,
    PrefixResult,
    SessionInfo,
    SnapshotInfo,
    SuffixResult,
    input_to_pb,
)
from ._wire import (
    AUTH_METADATA_KEY,
    CLIENT_METADATA_KEY,
    INSTANCE_METADATA_KEY,
    find_auth_token,
)

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Client",
    "Completion",
    "Session",
    "describe",
    "open_session",
]


@dataclass(frozen=True)
class Completion:
    """A whole Decode, collected."""

    text: str
    token_ids: tuple[int, ...]
    final: DecodeFinal


def _decode_config(
    max_tokens: int | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    repeat_penalty: float | None,
    repeat_last_n: int | None,
    seed: int | None,
    stop: Sequence[str],
    ignore_eos: bool,
    stop_token_ids: Sequence[int] = (),
) -> pb.DecodeConfig:
    try:
        config = pb.DecodeConfig(
            stop=list(stop), ignore_eos=ignore_eos, stop_token_ids=list(stop_token_ids)
        )
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"stop_token_ids={stop_token_ids!r}: {exc}") from None
    for name, value in (
        ("max_tokens", max_tokens),
        ("temperature", temperature),
        ("top_k", top_k),
        ("top_p", top_p),
        ("min_p", min_p),
        ("repeat_penalty", repeat_penalty),
        ("repeat_last_n", repeat_last_n),
        ("seed", seed),
    ):
        if value is not None:
            try:
                setattr(config, name, value)
            except (TypeError, ValueError) as exc:  # e.g. a negative max_tokens
                raise InvalidArgument(f"{name}={value!r}: {exc}", field=name) from None
    return config


def _decode_request(
    handle: str, config: pb.DecodeConfig, suffix: InputLike | None
) -> pb.DecodeRequest:
    request = pb.DecodeRequest(handle=handle, config=config)
    if suffix is not None:
        request.suffix.CopyFrom(input_to_pb(suffix))
    return request


def _restore_request(
    snapshot_id: str, model: ModelRef | str | None, n_ctx: int
) -> pb.RestoreRequest:
    request = pb.RestoreRequest(snapshot_id=snapshot_id, config=pb.SessionConfig(n_ctx=n_ctx))
    if model is not None:
        request.model.CopyFrom(ModelRef.of(model).to_pb())
    return request


def _instance_of(handle: str) -> str:
    return handle.rpartition("/")[0]


class _ClientBase:
    """Which daemon to dial and how to talk to it; no I/O but reading the lease."""

    def __init__(
        self,
        data_root: str | os.PathLike[str] | None,
        timeout_s: float | None,
        wait_ready_s: float,
        auth_token: str | None,
        tls_ca: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        tls: bool = False,
    ) -> None:
        self._data_root = resolve_data_root(data_root)
        self._tls_ca = tls_ca
        #: dial this HOST:PORT (or unix:PATH) directly instead of the leader the lease names
        self._endpoint = endpoint
        #: endpoints that speak TLS: the lease says so, or the caller did for ``endpoint``
        self._tls_endpoints: set[str] = {endpoint} if endpoint and tls else set()
        self._auth = (
            ((AUTH_METADATA_KEY, f"Bearer {token}"),)
            if (token := find_auth_token(self._data_root, auth_token))
            else ()
        )
        self._timeout_s = timeout_s
        self._wait_ready_s = wait_ready_s
        self._lock = threading.Lock()
        self._target: tuple[str, str] | None = None  # (endpoint, instance id)
        #: per daemon instance: our Attach id and the open stream that keeps it alive
        self._attached: dict[tuple[str, str], tuple[str, Any]] = {}
        self._attach_lock = threading.Lock()

    def _leader(self, refresh: bool = False) -> tuple[str, str]:
        if self._endpoint:
            # no lease to name the instance: calls go unfenced (a session's handle still
            # names its instance, and the daemon checks that)
            return (self._endpoint, "")
        with self._lock:
            if self._target is None or refresh:
                result = probe(data_root=self._data_root).raise_for_state()
                assert result.lease is not None
                self._target = (result.lease.endpoint, result.lease.instance_id)
                if result.lease.tls:
                    self._tls_endpoints.add(result.lease.endpoint)
            return self._target

    def _open_channel(self, endpoint: str, *, aio: bool = False) -> Any:
        tls = endpoint in self._tls_endpoints
        try:
            ca = find_tls_ca(self._data_root, self._tls_ca) if tls else None
        except OSError as exc:
            raise Unavailable(f"cannot read the TLS CA for {endpoint}: {exc}") from None
        return open_channel(endpoint, tls, ca, aio=aio)

    def _metadata(self, instance: str, client_id: str = "") -> tuple[tuple[str, str], ...]:
        if client_id:
            return (
                (INSTANCE_METADATA_KEY, instance),
                (CLIENT_METADATA_KEY, client_id),
                *self._auth,
            )
        return ((INSTANCE_METADATA_KEY, instance), *self._auth)

    @staticmethod
    def _attach_request() -> pb.AttachRequest:
        return pb.AttachRequest(client_name=f"{os.path.basename(sys.argv[0])} pid {os.getpid()}")


class _Retry:
    """What to do after a failed call; no I/O but re-reading the lease.

    * the leader may have changed (no answer, or another instance answered): read the lease
      again and, if it names another daemon, retry once there (calls tied to a session's handle
      are not moved: the session lives on its own instance);
    * the daemon is starting (loading its --model, say): wait up to ``wait_ready_s``;
    * the daemon is overloaded for a moment: retry after its ``retry_after_s``, within the same
      ``wait_ready_s``.
    Anything else is raised as the typed error.
    """

    pause_s = 0.1

    def __init__(self, client: _ClientBase, instance_hint: str) -> None:
        self._client = client
        self._instance_hint = instance_hint
        self._redialled = False
        self._ready_by = time.monotonic() + client._wait_ready_s

    def after(self, exc: Exception, target: tuple[str, str]) -> tuple[str, str]:
        """The target to retry on (after ``pause_s``); raises the typed error when done."""
        error = exc if isinstance(exc, RemoteError) else error_from_rpc(exc)
        cause = exc.__cause__ if isinstance(exc, RemoteError) else exc
        if (
            not self._instance_hint
            and not self._redialled
            and isinstance(error, (Unavailable, StaleFence))
        ):
            fresh = self._client._leader(refresh=True)
            if fresh != target:
                self._redialled = True
                self.pause_s = 0.0
                return fresh
        if (
            isinstance(error, NotReady)
            and not self._instance_hint
            and time.monotonic() < self._ready_by
        ):
            self.pause_s = 0.1
            return self._client._leader(refresh=True)
        if isinstance(error, Overloaded) and time.monotonic() < self._ready_by:
            # busy for a moment (a full queue, every live session busy): retry when it says
            try:
                self.pause_s = min(2.0, float(error.metadata.get("retry_after_s", "0.5")))
            except ValueError:
                self.pause_s = 0.5
            return target
        raise error from cause


class Client(_ClientBase):
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
            data_root, timeout_s, wait_ready_s, auth_token, tls_ca, endpoint=endpoint, tls=tls
        )
        self._channels: dict[tuple[str, str], grpc.Channel] = {}

    def _stub(self, target: tuple[str, str]) -> Any:
        with self._lock:
            channel = self._channels.get(target)
            if channel is None:
                for old in self._channels.values():
                    old.close()  # a new leader: the old instance will not answer again
                self._channels = {target: self._open_channel(target[0])}
                channel = self._channels[target]
        return modeld_pb2_grpc.ModeldStub(channel)

    def _attach(self, target: tuple[str, str]) -> str:
        """Our Attach id on ``target``, opening the lifeline stream on first use. Sessions
        opened with it close when this client goes away (closed, crashed, killed)."""
        with self._attach_lock:
            if target not in self._attached:
                call = self._stub(target).Attach(
                    self._attach_request(), metadata=self._metadata(target[1])
                )
                try:
                    event = next(call)
                except grpc.RpcError as exc:
                    raise error_from_rpc(exc) from exc
                self._attached[target] = (event.client_id, call)
            return self._attached[target][0]

    def _unary(
        self, method: str, request: Any, instance_hint: str = "", attach: bool = False
    ) -> Any:
        target = self._leader()
        retry = _Retry(self, instance_hint)
        while True:
            try:
                client_id = self._attach(target) if attach else ""
                call = getattr(self._stub(target), method)
                return call(
                    request,
                    metadata=self._metadata(instance_hint or target[1], client_id),
                    timeout=self._timeout_s,
                )
            except (grpc.RpcError, RemoteError) as exc:
                target = retry.after(exc, target)
                time.sleep(retry.pause_s)

    def status(self) -> pb.StatusResponse:
        reply: pb.StatusResponse = self._unary("Status", pb.StatusRequest())
        return reply

    def describe(self, model: ModelRef | str) -> Description:
        reply = self._unary("Describe", pb.DescribeRequest(model=ModelRef.of(model).to_pb()))
        return Description(ModelFacts.from_pb(reply.facts), _capacity(reply))

    def open_session(self, model: ModelRef | str, *, n_ctx: int = 0) -> Session:
        request = pb.OpenSessionRequest(
            model=ModelRef.of(model).to_pb(), config=pb.SessionConfig(n_ctx=n_ctx)
        )
        reply = self._unary("OpenSession", request, attach=True)
        return Session(self, SessionInfo.from_pb(reply))

    def restore(
        self, snapshot_id: str, model: ModelRef | str | None = None, *, n_ctx: int = 0
    ) -> Session:
        """A new session from a snapshot (by default on the model it was taken on)."""
        reply = self._unary("Restore", _restore_request(snapshot_id, model, n_ctx), attach=True)
        return Session(self, SessionInfo.from_pb(reply))

    def tokenize(self, model: ModelRef | str, text: str, *, add_special: bool = False) -> list[int]:
        request = pb.TokenizeRequest(
            model=ModelRef.of(model).to_pb(), text=text, add_special=add_special
        )
        return list(self._unary("Tokenize", request).ids)

    def detokenize(self, model: ModelRef | str, ids: Sequence[int]) -> str:
        request = pb.DetokenizeRequest(model=ModelRef.of(model).to_pb(), ids=list(ids))
        return str(self._unary("Detokenize", request).text)

    def close(self) -> None:
        """Close the connection; the daemon closes the sessions this client opened."""
        with self._attach_lock:
            for _, call in self._attached.values():
                call.cancel()
            self._attached.clear()
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _capacity(reply: pb.DescribeResponse) -> Any:
    from ._types import Capacity

    return Capacity.from_pb(reply.capacity)


class Session:
    """One session on the daemon: its KV stays resident between calls until ``close()``."""

    def __init__(self, client: Client, info: SessionInfo) -> None:
        self._client = client
        self.info = info
        self.handle = info.handle
        self._instance = _instance_of(info.handle)

    def _call(self, method: str, request: Any) -> Any:
        return self._client._unary(method, request, instance_hint=self._instance)

    def ensure_prefix(self, prefix: InputLike) -> PrefixResult:
        """Make exactly ``prefix`` resident, reusing the longest common prefix already there."""
        request = pb.EnsurePrefixRequest(handle=self.handle, prefix=input_to_pb(prefix))
        return PrefixResult.from_pb(self._call("EnsurePrefix", request))

    def prefill_suffix(self, suffix: InputLike) -> SuffixResult:
        request = pb.PrefillSuffixRequest(handle=self.handle, suffix=input_to_pb(suffix))
        return SuffixResult.from_pb(self._call("PrefillSuffix", request))

    def decode(
        self,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repeat_penalty: float | None = None,
        repeat_last_n: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        suffix: InputLike | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> Iterator[DecodeChunk]:
        """Stream generated chunks; the last one carries ``final``. Leaving early cancels.

        :param suffix: appended first, as :meth:`prefill_suffix` would, in the same round trip.
        """
        config = _decode_config(
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            seed,
            stop,
            ignore_eos,
            stop_token_ids,
        )
        target = self._client._leader()
        stub = self._client._stub(target)
        call = stub.Decode(
            _decode_request(self.handle, config, suffix),
            metadata=self._client._metadata(self._instance),
            timeout=self._client._timeout_s,
        )
        try:
            for message in call:
                yield DecodeChunk.from_pb(message)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    def generate(self, **config: Any) -> Completion:
        """``decode`` collected into one :class:`Completion`."""
        texts: list[str] = []
        ids: list[int] = []
        final = None
        for chunk in self.decode(**config):
            texts.append(chunk.text)
            ids.extend(chunk.token_ids)
            final = chunk.final or final
        assert final is not None
        return Completion("".join(texts), tuple(ids), final)

    def snapshot(self) -> SnapshotInfo:
        """Persist this session in the data root; restore it with :meth:`Client.restore`."""
        reply = self._call("Snapshot", pb.SnapshotRequest(handle=self.handle))
        return SnapshotInfo.from_pb(reply)

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        request = pb.TokenizeRequest(handle=self.handle, text=text, add_special=add_special)
        return list(self._call("Tokenize", request).ids)

    def detokenize(self, ids: Sequence[int]) -> str:
        request = pb.DetokenizeRequest(handle=self.handle, ids=list(ids))
        return str(self._call("Detokenize", request).text)

    def close(self) -> bool:
        """Free the session (idempotent); True when it was open."""
        return bool(self._call("CloseSession", pb.CloseSessionRequest(handle=self.handle)).closed)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # the daemon (and the session with it) may be gone already
        with contextlib.suppress(RemoteError):
            self.close()


class AsyncClient(_ClientBase):
    """The asyncio twin of :class:`Client`."""

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
            data_root, timeout_s, wait_ready_s, auth_token, tls_ca, endpoint=endpoint, tls=tls
        )
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    async def _stub(self, target: tuple[str, str]) -> Any:
        channel = self._channels.get(target)
        if channel is None:
            old, self._channels = self._channels, {}
            for stale in old.values():
                await stale.close()
            channel = self._channels[target] = self._open_channel(target[0], aio=True)
        return modeld_pb2_grpc.ModeldStub(channel)

    async def _attach(self, target: tuple[str, str]) -> str:
        if target not in self._attached:
            stub = await self._stub(target)
            call = stub.Attach(self._attach_request(), metadata=self._metadata(target[1]))
            try:
                event = await call.read()
            except grpc.RpcError as exc:
                raise error_from_rpc(exc) from exc
            self._attached[target] = (event.client_id, call)
        return self._attached[target][0]

    async def _unary(
        self, method: str, request: Any, instance_hint: str = "", attach: bool = False
    ) -> Any:
        target = self._leader()
        retry = _Retry(self, instance_hint)
        while True:
            try:
                client_id = await self._attach(target) if attach else ""
                call = getattr(await self._stub(target), method)
                return await call(
                    request,
                    metadata=self._metadata(instance_hint or target[1], client_id),
                    timeout=self._timeout_s,
                )
            except (grpc.RpcError, RemoteError) as exc:
                target = retry.after(exc, target)
                await asyncio.sleep(retry.pause_s)

    async def status(self) -> pb.StatusResponse:
        reply: pb.StatusResponse = await self._unary("Status", pb.StatusRequest())
        return reply

    async def describe(self, model: ModelRef | str) -> Description:
        request = pb.DescribeRequest(model=ModelRef.of(model).to_pb())
        reply = await self._unary("Describe", request)
        return Description(ModelFacts.from_pb(reply.facts), _capacity(reply))

    async def open_session(self, model: ModelRef | str, *, n_ctx: int = 0) -> AsyncSession:
        request = pb.OpenSessionRequest(
            model=ModelRef.of(model).to_pb(), config=pb.SessionConfig(n_ctx=n_ctx)
        )
        reply = await self._unary("OpenSession", request, attach=True)
        return AsyncSession(self, SessionInfo.from_pb(reply))

    async def restore(
        self, snapshot_id: str, model: ModelRef | str | None = None, *, n_ctx: int = 0
    ) -> AsyncSession:
        request = _restore_request(snapshot_id, model, n_ctx)
        reply = await self._unary("Restore", request, attach=True)
        return AsyncSession(self, SessionInfo.from_pb(reply))

    async def aclose(self) -> None:
        for _, call in self._attached.values():
            call.cancel()
        self._attached.clear()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncSession:
    """The asyncio twin of :class:`Session`."""

    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        self._client = client
        self.info = info
        self.handle = info.handle
        self._instance = _instance_of(info.handle)

    async def _call(self, method: str, request: Any) -> Any:
        return await self._client._unary(method, request, instance_hint=self._instance)

    async def ensure_prefix(self, prefix: InputLike) -> PrefixResult:
        request = pb.EnsurePrefixRequest(handle=self.handle, prefix=input_to_pb(prefix))
        return PrefixResult.from_pb(await self._call("EnsurePrefix", request))

    async def prefill_suffix(self, suffix: InputLike) -> SuffixResult:
        request = pb.PrefillSuffixRequest(handle=self.handle, suffix=input_to_pb(suffix))
        return SuffixResult.from_pb(await self._call("PrefillSuffix", request))

    async def decode(
        self,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repeat_penalty: float | None = None,
        repeat_last_n: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        suffix: InputLike | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> AsyncIterator[DecodeChunk]:
        config = _decode_config(
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            seed,
            stop,
            ignore_eos,
            stop_token_ids,
        )
        stub = await self._client._stub(self._client._leader())
        call = stub.Decode(
            _decode_request(self.handle, config, suffix),
            metadata=self._client._metadata(self._instance),
            timeout=self._client._timeout_s,
        )
        try:
            async for message in call:
                yield DecodeChunk.from_pb(message)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def generate(self, **config: Any) -> Completion:
        texts: list[str] = []
        ids: list[int] = []
        final = None
        async for chunk in self.decode(**config):
            texts.append(chunk.text)
            ids.extend(chunk.token_ids)
            final = chunk.final or final
        assert final is not None
        return Completion("".join(texts), tuple(ids), final)

    async def snapshot(self) -> SnapshotInfo:
        reply = await self._call("Snapshot", pb.SnapshotRequest(handle=self.handle))
        return SnapshotInfo.from_pb(reply)

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        request = pb.TokenizeRequest(handle=self.handle, text=text, add_special=add_special)
        return list((await self._call("Tokenize", request)).ids)

    async def detokenize(self, ids: Sequence[int]) -> str:
        request = pb.DetokenizeRequest(handle=self.handle, ids=list(ids))
        return str((await self._call("Detokenize", request)).text)

    async def close(self) -> bool:
        reply = await self._call("CloseSession", pb.CloseSessionRequest(handle=self.handle))
        return bool(reply.closed)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with contextlib.suppress(RemoteError):
            await self.close()


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


def open_session(model: ModelRef | str, *, n_ctx: int = 0) -> Session:
    """Open a session on the daemon of this process's data root (see :func:`set_data_root`)."""
    return _default_client().open_session(model, n_ctx=n_ctx)
