"""Sessions: the token tape, reuse arithmetic, and the order of fallible work.

A session's *tape* is the list of tokens it holds, in order; the engine has KV for the first
``kv_len`` of them (all of them, except right after a Decode, when the last sampled token has not
been computed yet: it is computed by whatever comes next, and counted as prefilled there).

Every operation does all of its fallible work (tokenizing, validating, overflow checks) before it
touches the KV, so a refused request leaves the session exactly as it was. One operation at a time
per session: a second one is ``session_busy``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar

import psutil

from modeld._metrics import Metrics
from modeld.backends._base import Backend, EngineModel, EngineSession, EngineState
from modeld.engine._batching import feeds_for
from modeld.engine._scheduler import EngineWorker
from modeld.models._catalog import ModelCatalog
from modeld.models._facts import ModelSpec
from modeld.sessions._parking import NoRoom, ParkedState, ParkingLot
from modeld.sessions._snapshots import Snapshot, SnapshotStore
from modeld.sessions._stop_strings import StopScanner
from modeld.sessions._types import (
    ChatInput,
    DecodeRequest,
    DecodeStep,
    SessionInput,
    TextInput,
    TokenInput,
)
from modeldconn._errors import (
    ContextOverflow,
    InsufficientMemory,
    InvalidArgument,
    SessionBusy,
    SessionNotFound,
    StaleFence,
)
from modeldconn._types import Capabilities, Capacity, DecodeFinal, PrefixResult, SuffixResult

__all__ = ["MemoryBudget", "ResolvedConfig", "Session", "SessionManager"]

log = logging.getLogger("modeld.sessions")
T = TypeVar("T")

DEFAULT_N_CTX = 4096
#: how long an operation waits for the session's previous one before session_busy
BUSY_GRACE_S = 0.25
#: how long a call waits for a live context when every live session is busy
ROOM_WAIT_S = 120.0
#: a prefix held by another session is copied (a few ms) rather than computed (~1.4 ms a token on
#: 2 cores) once it beats the session's own resident prefix by this many tokens
MIN_SHARED_TOKENS = 16
_REMEMBER_CLOSED = 10_000


@dataclass(frozen=True)
class MemoryBudget:
    """What modeld may spend on weights and KV: free RAM less a reserve, under an optional cap."""

    limit_bytes: int = 0  #: 0 = no cap beyond free memory
    reserve_bytes: int = 256 << 20

    def free_bytes(self, in_use: int) -> int:
        free = psutil.virtual_memory().available - self.reserve_bytes
        if self.limit_bytes:
            free = min(free, self.limit_bytes - in_use)
        return max(0, free)


@dataclass(frozen=True)
class ResolvedConfig:
    n_ctx: int
    requested_n_ctx: int
    model_max_context: int
    memory_fit_context: int
    n_threads: int
    n_batch: int


@dataclass
class LoadedModel:
    spec: ModelSpec
    #: None once unloaded after a long idle; reloaded (on the worker) by its next use
    engine: EngineModel | None
    sessions: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class Session:
    id: str
    handle: str
    model: LoadedModel
    #: None while parked (see ``_parking``)
    engine: EngineSession | None
    n_ctx: int
    tape: list[int] = field(default_factory=list)
    prefix_len: int = 0
    #: tokens the last EnsurePrefix kept; reported by the next Decode, then reset
    turn_reused: int = 0
    busy: bool = False
    #: a Decode is stepping it on the worker: its sampled token may be computed in a batch
    decoding: bool = False
    #: set whenever no operation runs, so a waiting one can start
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    parked: ParkedState | None = None
    last_used: float = field(default_factory=time.monotonic)
    #: the Attach id of the client that opened it; its session closes when that client goes
    owner: str = ""
    close_requested: bool = False

    @property
    def kv_bytes(self) -> int:
        return self.n_ctx * self.model.spec.facts.kv_bytes_per_token


def prefix_hash(tokens: list[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual warm turn, compared in C
        return n
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class SessionManager:
    def __init__(
        self,
        *,
        instance_id: str,
        catalog: ModelCatalog,
        backend: Backend,
        worker: EngineWorker,
        budget: MemoryBudget,
        lot: ParkingLot,
        snapshots: SnapshotStore,
        metrics: Metrics,
    ) -> None:
        self._instance_id = instance_id
        self._catalog = catalog
        self._backend = backend
        self._worker = worker
        self._budget = budget
        self.lot = lot
        self.snapshots = snapshots
        self._metrics = metrics
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._loading: dict[tuple[str, str], asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._sessions: dict[str, Session] = {}
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: notified whenever an operation ends, so calls waiting for a live context retry
        self._room = asyncio.Condition()
        self.prefix_shares = 0
        self.decode_calls = 0
        self.decode_rows = 0
        self.prefix_shared_tokens = 0
        self.sessions_reaped = 0
        self.prefix_hits = 0
        self.prefix_misses = 0
        self.model_loads = 0
        self._clients: set[str] = set()

    # -- models -------------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._backend.capabilities

    def loaded_models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def session_count(self) -> int:
        return len(self._sessions)

    async def resolve(self, name: str, type_: str, digest: str, path: str) -> ModelSpec:
        # hashing a multi-GB file must not stall the event loop, nor queue behind the engine
        return await asyncio.to_thread(self._catalog.resolve, name, type_, digest, path)

    def _in_use(self) -> int:
        weights = sum(m.spec.facts.file_bytes for m in self._models.values() if m.engine)
        live = sum(s.kv_bytes for s in self._sessions.values() if s.parked is None)
        return weights + live + self.lot.ram_bytes

    def _weights_in(self, spec: ModelSpec) -> bool:
        loaded = self._models.get(spec.key)
        return loaded is not None and loaded.engine is not None

    def live_count(self) -> int:
        return sum(1 for s in self._sessions.values() if s.parked is None)

    def capacity(self, spec: ModelSpec) -> Capacity:
        facts = spec.facts
        free = self._budget.free_bytes(self._in_use())
        pending_weights = 0 if self._weights_in(spec) else facts.file_bytes
        per_token = max(1, facts.kv_bytes_per_token)
        fit = max(0, free - pending_weights) // per_token
        model_max = facts.context_length or DEFAULT_N_CTX
        return Capacity(
            kv_bytes_per_token=facts.kv_bytes_per_token,
            free_bytes=free,
            model_max_context=model_max,
            memory_fit_context=min(fit, model_max),
            default_context=min(DEFAULT_N_CTX, model_max, fit),
        )

    async def preload(self, spec: ModelSpec) -> None:
        await self._load(spec)

    async def _load(self, spec: ModelSpec) -> LoadedModel:
        async with self._loading[spec.key]:
            loaded = self._models.get(spec.key)
            if loaded is None:
                loaded = self._models[spec.key] = LoadedModel(spec, None)
            if loaded.engine is None:
                await self._worker.call(self._model, loaded)
            return loaded

    def _model(self, loaded: LoadedModel) -> EngineModel:
        """Worker thread: the model's engine, (re)loading the weights if they are not in."""
        loaded.last_used = time.monotonic()
        if loaded.engine is None:
            started = time.perf_counter()
            loaded.engine = self._backend.load(loaded.spec)
            self.model_loads += 1
            log.info(
                "loaded %s (%s) in %.2f s",
                loaded.spec.facts.name,
                loaded.spec.facts.digest[:12],
                time.perf_counter() - started,
            )
        return loaded.engine

    async def unload_idle_models(self, idle_s: float) -> None:
        """Free the weights of models no live session uses and nobody used for ``idle_s``;
        their parked sessions stay restorable (the weights load again first)."""
        now = time.monotonic()
        for loaded in self._models.values():
            live = any(s.model is loaded and s.engine is not None for s in self._sessions.values())
            if loaded.engine is not None and not live and now - loaded.last_used > idle_s:
                await self._worker.call(self._unload, loaded)

    def _unload(self, loaded: LoadedModel) -> None:
        live = any(s.model is loaded and s.engine is not None for s in self._sessions.values())
        if loaded.engine is not None and not live:
            loaded.engine.close()
            loaded.engine = None
            log.info("unloaded %s after idling", loaded.spec.facts.name)

    # -- sessions -----------------------------------------------------------------------------

    # -- clients ------------------------------------------------------------------------------

    def attach(self, client_id: str) -> None:
        self._clients.add(client_id)

    def detach(self, client_id: str) -> int:
        """The client is gone: close every session it opened; returns how many."""
        self._clients.discard(client_id)
        gone = [s for s in self._sessions.values() if s.owner == client_id]
        for session in gone:
            if session.busy:
                session.close_requested = True  # its cancelled operation is unwinding
            else:
                self._forget(session)
        self.sessions_reaped += len(gone)
        return len(gone)

    def queue_depth(self) -> int:
        return self._worker.depth

    def client_count(self) -> int:
        return len(self._clients)

    async def reap(self, *, park_after_s: float, close_after_s: float) -> None:
        """Park sessions idle longer than ``park_after_s``; close those idle past
        ``close_after_s`` (0 disables either)."""
        now = time.monotonic()
        for session in list(self._sessions.values()):
            idle_for = now - session.last_used
            if session.busy:
                continue
            if close_after_s and idle_for > close_after_s:
                log.info("closing session %s, idle for %.0f s", session.id, idle_for)
                self._forget(session)
                self.sessions_reaped += 1
            elif park_after_s and idle_for > park_after_s and session.engine is not None:
                await self._worker.call(self._park_if_idle, session)

    def _park_if_idle(self, session: Session) -> None:
        if session.engine is not None and not session.busy and session.id in self._sessions:
            self.lot.park(session)

    async def open(
        self, spec: ModelSpec, requested_n_ctx: int, owner: str = ""
    ) -> tuple[Session, ResolvedConfig]:
        capacity = self.capacity(spec)
        model_max = capacity.model_max_context
        if requested_n_ctx > model_max:
            raise InvalidArgument(
                f"n_ctx {requested_n_ctx} exceeds the model's trained context {model_max}",
                field="n_ctx",
                model_max_context=model_max,
            )
        n_ctx = requested_n_ctx or capacity.default_context
        per_token = spec.facts.kv_bytes_per_token
        pending_weights = 0 if self._weights_in(spec) else spec.facts.file_bytes
        required = n_ctx * per_token + pending_weights
        if n_ctx < 1 or required > capacity.free_bytes:
            raise InsufficientMemory(
                f"n_ctx {n_ctx} needs {n_ctx} x {per_token} B of KV"
                + (f" + {pending_weights} B of weights" if pending_weights else "")
                + f" = {required} B; {capacity.free_bytes} B free "
                f"(fits {capacity.memory_fit_context} tokens)",
                required=required,
                free=capacity.free_bytes,
                n_ctx=n_ctx,
                kv_bytes_per_token=per_token,
                memory_fit_context=capacity.memory_fit_context,
            )
        loaded = await self._load(spec)
        engine = await self._waiting_for_room(
            lambda: self._worker.call(self._open_context, loaded, n_ctx)
        )
        engine_model = loaded.engine
        assert engine_model is not None  # _open_context loaded it
        session_id = uuid.uuid4().hex
        session = Session(session_id, f"{self._instance_id}/{session_id}", loaded, engine, n_ctx)
        session.owner = owner if owner in self._clients else ""
        self._sessions[session_id] = session
        loaded.sessions += 1
        log.info("opened session %s on %s, n_ctx %d", session_id, spec.facts.name, n_ctx)
        resolved = ResolvedConfig(
            n_ctx=n_ctx,
            requested_n_ctx=requested_n_ctx,
            model_max_context=model_max,
            memory_fit_context=capacity.memory_fit_context,
            n_threads=engine_model.n_threads,
            n_batch=engine_model.n_batch,
        )
        return session, resolved

    def _open_context(self, loaded: LoadedModel, n_ctx: int) -> EngineSession:
        """Worker thread: a new engine context, parking an idle session first if needed."""
        self.lot.make_room(self._sessions.values(), keep=None)
        return self._model(loaded).open_session(n_ctx)

    def _live(self, session: Session) -> EngineSession:
        """Worker thread: the session's engine context, restored first if it was parked."""
        session.last_used = time.monotonic()
        if session.engine is None:
            self.lot.make_room(self._sessions.values(), keep=session)
            self.lot.restore(
                session, lambda: self._model(session.model).open_session(session.n_ctx)
            )
        assert session.engine is not None
        return session.engine

    def get(self, handle: str) -> Session:
        instance, _, session_id = handle.rpartition("/")
        if not instance or not session_id:
            raise SessionNotFound(f"{handle!r} is not a session handle", handle=handle)
        if instance != self._instance_id:
            raise StaleFence(
                f"the handle belongs to instance {instance}; this is {self._instance_id}",
                served_by=self._instance_id,
                requested=instance,
            )
        session = self._sessions.get(session_id)
        if session is None:
            state = "closed" if session_id in self._closed else "unknown"
            raise SessionNotFound(f"session {session_id} is {state}", handle=handle, state=state)
        return session

    @contextlib.asynccontextmanager
    async def _operation(self, handle: str) -> AsyncIterator[Session]:
        session = self.get(handle)
        deadline = time.monotonic() + BUSY_GRACE_S
        while session.busy:
            # A Decode the client just cancelled takes a moment to unwind here; a caller that
            # hung up and called again must not be refused for that. A real overlap still is.
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(session.idle.wait(), remaining)
            except TimeoutError:
                raise SessionBusy(
                    f"session {session.id} is busy with another operation", handle=handle
                ) from None
            session = self.get(handle)  # it may have been closed meanwhile
        session.busy = True
        session.idle.clear()
        try:
            yield session
        finally:
            session.busy = False
            session.last_used = time.monotonic()
            session.idle.set()
            async with self._room:
                self._room.notify_all()
            if session.close_requested:
                self._forget(session)

    async def close(self, handle: str) -> bool:
        try:
            session = self.get(handle)
        except SessionNotFound:
            return False  # closing twice is not an error
        if session.busy:
            session.close_requested = True  # freed when its operation ends
            return True
        self._forget(session)
        await self._worker.call(lambda: None)  # its release (queued first) has run
        log.info("closed session %s", session.id)
        return True

    def _forget(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        session.model.sessions -= 1
        self._closed[session.id] = None
        while len(self._closed) > _REMEMBER_CLOSED:
            self._closed.popitem(last=False)
        # queued behind any step still running for it on the worker
        self._worker.submit(lambda: self._release(session))

    def _release(self, session: Session) -> None:
        if session.engine is not None:
            session.engine.close()
            session.engine = None
        self.lot.forget(session)

    async def close_all(self) -> None:
        for session in list(self._sessions.values()):
            self._forget(session)
        await self._worker.call(lambda: None)  # the releases queued above have run
        for loaded in self._models.values():
            if loaded.engine is not None:
                await self._worker.call(loaded.engine.close)
        self._models.clear()

    # -- inputs -------------------------------------------------------------------------------

    @staticmethod
    def _to_tokens(model: EngineModel, value: SessionInput, *, start: bool) -> list[int]:
        """Runs on the worker. ``start``: this input begins the tape (BOS where the model has)."""
        if isinstance(value, TokenInput):
            tokens = list(value.ids)
            vocab = model.facts.vocab_size
            bad = next((t for t in tokens if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidArgument(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        elif isinstance(value, TextInput):
            tokens = model.tokenize(value.text, add_special=start) if value.text else []
        else:
            chat: ChatInput = value
            if any(not role for role, _ in chat.messages):
                raise InvalidArgument("every chat message needs a role")
            text = (
                model.render_chat(chat.messages, chat.add_generation_prompt)
                if (chat.messages)
                else ""
            )
            tokens = model.tokenize(text, add_special=start) if text else []
        if not tokens:
            raise InvalidArgument("the input is empty")
        return tokens

    # -- EnsurePrefix / PrefillSuffix -----------------------------------------------------------

    async def _waiting_for_room(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt``; while every live session is busy (nothing can be parked), wait for
        one to finish and try again, up to ROOM_WAIT_S, then answer overloaded."""
        deadline = time.monotonic() + ROOM_WAIT_S
        while True:
            try:
                return await attempt()
            except NoRoom:
                if time.monotonic() > deadline:
                    raise
            async with self._room:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 0.5)

    async def _in_turns(self, steps: Generator[T | None, None, None]) -> T:
        """Run a worker generator that yields None between prefill chunks, then its result;
        other sessions' work goes in between the chunks."""
        result: T | None = None
        async for item in self._worker.stream(steps):
            if item is not None:
                result = item
        assert result is not None
        return result

    def _prefill_in_turns(self, session: Session, full: list[int]) -> Generator[None, None, None]:
        """Compute ``full[kv_len:]`` a batch at a time, the tape always matching the KV."""
        engine = self._live(session)
        step = self._model(session.model).n_batch
        while engine.kv_len < len(full):
            engine.prefill(full[engine.kv_len : engine.kv_len + step])
            session.tape = full[: engine.kv_len]
            if engine.kv_len < len(full):
                yield None
        session.tape = list(full)

    async def ensure_prefix(self, handle: str, value: SessionInput) -> PrefixResult:
        async with self._operation(handle) as session:
            result = await self._waiting_for_room(
                lambda: self._in_turns(self._ensure_prefix(session, value))
            )
        tokens = self._metrics.tokens
        tokens.labels("prefilled").inc(result.prefilled)
        tokens.labels("reused").inc(result.reused - result.shared)
        tokens.labels("shared").inc(result.shared)
        return result

    def _ensure_prefix(
        self, session: Session, value: SessionInput
    ) -> Generator[PrefixResult | None, None, None]:
        engine = self._live(session)
        tokens = self._to_tokens(self._model(session.model), value, start=True)
        if len(tokens) > session.n_ctx:
            raise ContextOverflow(
                f"a prefix of {len(tokens)} tokens does not fit n_ctx {session.n_ctx}",
                stage="ensure_prefix",
                resident=engine.kv_len,
                additional=len(tokens),
                n_ctx=session.n_ctx,
            )
        matching = _common_prefix(session.tape, tokens)
        # only tokens whose KV is resident can be reused; a matching token sampled by the last
        # Decode but not computed yet is kept, not dropped, and computed now
        common = min(matching, engine.kv_len)
        dropped = len(session.tape) - matching
        shared = self._share_from_donor(session, tokens, common)
        common = max(common, shared)
        if common:
            self.prefix_hits += 1
        else:
            self.prefix_misses += 1
        engine.truncate(common)
        session.tape = session.tape[:common]
        yield from self._prefill_in_turns(session, tokens)
        session.prefix_len = len(tokens)
        session.turn_reused = common
        yield PrefixResult(
            reused=common,
            prefilled=len(tokens) - common,
            dropped=dropped,
            prefix_tokens=len(tokens),
            resident=engine.kv_len,
            available=session.n_ctx - engine.kv_len,
            prefix_hash=prefix_hash(tokens),
            shared=shared,
        )

    def _share_from_donor(self, session: Session, tokens: list[int], own: int) -> int:
        """Worker thread: start ``session`` from the KV of the session that holds the longest
        prefix of ``tokens``, when that beats its own by enough to pay for the copy.

        :returns: tokens copied (0: no donor was worth it; the session's KV is untouched).
        """
        best, donor = own + MIN_SHARED_TOKENS - 1, None
        for other in self._sessions.values():
            if other is session or other.model is not session.model:
                continue
            kv_len = (
                other.engine.kv_len
                if other.engine
                else other.parked.kv_len
                if (other.parked)
                else 0
            )
            have = min(_common_prefix(other.tape, tokens), kv_len)
            if have > best:
                best, donor = have, other
        if donor is None:
            return 0
        state = donor.engine.save_state() if donor.engine else self.lot.saved_state(donor)
        engine = self._live(session)
        engine.load_state(state)
        engine.truncate(best)
        session.tape = donor.tape[:best]
        self.prefix_shares += 1
        self.prefix_shared_tokens += best
        return best

    async def prefill_suffix(self, handle: str, value: SessionInput) -> SuffixResult:
        async with self._operation(handle) as session:
            result = await self._waiting_for_room(
                lambda: self._in_turns(self._prefill_suffix(session, value))
            )
        self._metrics.tokens.labels("prefilled").inc(result.prefilled)
        return result

    def _prefill_suffix(
        self, session: Session, value: SessionInput
    ) -> Generator[SuffixResult | None, None, None]:
        engine = self._live(session)
        tokens = self._to_tokens(self._model(session.model), value, start=not session.tape)
        pending = session.tape[engine.kv_len :]
        if len(session.tape) + len(tokens) > session.n_ctx:
            raise ContextOverflow(
                f"{len(tokens)} suffix tokens do not fit: {len(session.tape)} on the tape, "
                f"n_ctx {session.n_ctx}",
                stage="prefill_suffix",
                resident=len(session.tape),
                additional=len(tokens),
                n_ctx=session.n_ctx,
            )
        yield from self._prefill_in_turns(session, session.tape + tokens)
        yield SuffixResult(
            suffix_tokens=len(tokens),
            prefilled=len(pending) + len(tokens),
            resident=engine.kv_len,
            available=session.n_ctx - engine.kv_len,
        )

    # -- Decode -------------------------------------------------------------------------------

    async def decode(
        self, handle: str, request: DecodeRequest, suffix: SessionInput | None = None
    ) -> AsyncIterator[DecodeStep]:
        async with self._operation(handle) as session:
            if not session.tape and suffix is None:
                raise InvalidArgument("nothing to continue: EnsurePrefix or PrefillSuffix first")
            # live before streaming (waiting for room if every live session is busy); busy from
            # here on, it cannot be parked mid-Decode
            await self._waiting_for_room(lambda: self._worker.call(self._live, session))
            steps = self._decode_steps(session, request, suffix)
            async for step in self._worker.stream(steps):
                if step is None:
                    continue
                if step.final is not None:
                    self._observe(step.final)
                yield step

    def _observe(self, final: DecodeFinal) -> None:
        self._metrics.tokens.labels("generated").inc(final.completion_tokens)
        if final.completion_tokens:
            self._metrics.ttft_seconds.observe(final.ttft_ms / 1000)
        if final.completion_tokens > 1:
            per_token = final.decode_ms / 1000 / (final.completion_tokens - 1)
            self._metrics.token_seconds.observe(per_token)

    def _decode_steps(
        self, session: Session, request: DecodeRequest, suffix: SessionInput | None
    ) -> Generator[DecodeStep | None, None, None]:
        """Runs on the worker, one token per step; closing it mid-way keeps the tape valid."""
        received = time.perf_counter()
        engine, model = self._live(session), self._model(session.model)
        vocab = model.facts.vocab_size
        if (bad := next((t for t in request.stop_token_ids if t >= vocab), None)) is not None:
            raise InvalidArgument(
                f"stop token id {bad} is outside the vocabulary (0..{vocab - 1})",
                field="stop_token_ids",
            )
        if suffix is not None:
            for item in self._prefill_suffix(session, suffix):
                if item is None:
                    yield None  # between prefill chunks: other sessions' turn
        prompt_tokens, reused = len(session.tape), session.turn_reused
        session.turn_reused = 0
        if engine.kv_len < len(session.tape):
            engine.prefill(session.tape[engine.kv_len :])
        elif not engine.logits_current():
            # logits were discarded by a truncation: recompute the last token alone
            engine.truncate(engine.kv_len - 1)
            engine.prefill(session.tape[-1:])
        prefill_ms = (time.perf_counter() - received) * 1000
        sampler = engine.sampler(request.sampling, session.tape)
        scanner = StopScanner(request.stop)
        stop_reason, stop_string, stop_token = "max_tokens", "", None
        generated, ttft_ms, first_at = 0, 0.0, received
        try:
            while generated < request.max_tokens:
                if len(session.tape) >= session.n_ctx:
                    stop_reason = "context_full"
                    break
                if engine.kv_len < len(session.tape):
                    # the token sampled last step, unless another session's batch computed it
                    self._compute_sampled(session, model)
                token = sampler.sample()
                session.tape.append(token)
                generated += 1
                if generated == 1:
                    first_at = time.perf_counter()
                    ttft_ms = (first_at - received) * 1000
                # offered to other sessions' batches only if this decode will go on to need it
                session.decoding = (
                    generated < request.max_tokens and len(session.tape) < session.n_ctx
                )
                if not request.sampling.ignore_eos and model.is_end_of_generation(token):
                    stop_reason, session.decoding = "eos", False
                    yield DecodeStep("", (token,))
                    break
                if token in request.stop_token_ids:
                    stop_reason, stop_token, session.decoding = "stop_token", token, False
                    yield DecodeStep("", (token,))
                    break
                text, matched = scanner.feed(model.piece(token))
                if matched is not None:
                    stop_reason, stop_string, session.decoding = "stop", matched, False
                    yield DecodeStep(text, (token,))
                    break
                yield DecodeStep(text, (token,))
            tail = "" if stop_reason == "stop" else scanner.flush()
            decode_ms = (time.perf_counter() - first_at) * 1000
            final = DecodeFinal(
                stop_reason=stop_reason,
                stop_string=stop_string,
                stop_token=stop_token,
                prompt_tokens=prompt_tokens,
                reused_tokens=reused,
                completion_tokens=generated,
                prefill_ms=prefill_ms,
                ttft_ms=ttft_ms,
                decode_ms=decode_ms,
                # tokens after the first, over the time after the first
                tokens_per_s=(generated - 1) / (decode_ms / 1000) if generated > 1 else 0.0,
                # the last sampled token is on the tape, computed by whatever comes next
                resident=engine.kv_len,
                available=session.n_ctx - len(session.tape),
            )
            yield DecodeStep(tail, (), final)
        finally:
            session.decoding = False
            sampler.close()

    def _compute_sampled(self, session: Session, model: EngineModel) -> None:
        """Worker: compute ``session``'s last sampled token; where the backend batches, in one
        engine call with every other decoding session's (see ``_decode_batch``)."""
        rows = model.max_decode_rows  # 1 where batching is not exact (and not asked for)
        peers = self._sessions.values() if rows > 1 else ()
        feeds = feeds_for(session, peers, rows)
        if len(feeds) == 1:
            engine, token = feeds[0]
            engine.prefill([token])
        else:
            model.decode_batch(feeds)
        self.decode_calls += 1
        self.decode_rows += len(feeds)
        self._metrics.decode_rows.observe(len(feeds))

    # -- Snapshot / Restore -------------------------------------------------------------------

    async def snapshot(self, handle: str) -> tuple[str, int, int]:
        """Persist the session; returns (snapshot id, bytes, tape tokens)."""
        async with self._operation(handle) as session:
            state, tape, prefix_len = await self._worker.call(self._capture, session)
            snapshot = Snapshot(
                id=SnapshotStore.new_id(),
                state=state,
                model_digest=session.model.spec.facts.digest,
                model_path=str(session.model.spec.facts.path),
                fingerprint=self._backend.fingerprint,
                tape=tape,
                prefix_len=prefix_len,
                n_ctx=session.n_ctx,
            )
            size = await asyncio.to_thread(self.snapshots.save, snapshot)
            return snapshot.id, size, len(tape)

    def _capture(self, session: Session) -> tuple[EngineState, list[int], int]:
        state = session.engine.save_state() if session.engine else self.lot.saved_state(session)
        return state, list(session.tape), session.prefix_len

    async def restore(
        self, spec: ModelSpec, snapshot_id: str, n_ctx: int, owner: str = ""
    ) -> tuple[Session, ResolvedConfig]:
        snapshot = await asyncio.to_thread(
            self.snapshots.load,
            snapshot_id,
            model_digest=spec.facts.digest,
            fingerprint=self._backend.fingerprint,
        )
        wanted = n_ctx or snapshot.n_ctx
        if wanted < len(snapshot.tape):
            raise InvalidArgument(
                f"n_ctx {wanted} is smaller than the snapshot's {len(snapshot.tape)} tokens",
                field="n_ctx",
            )
        session, resolved = await self.open(spec, wanted, owner)
        try:
            await self._worker.call(self._install, session, snapshot)
        except BaseException:
            self._forget(session)
            raise
        return session, resolved

    def _install(self, session: Session, snapshot: Snapshot) -> None:
        self._live(session).load_state(snapshot.state)
        session.tape = list(snapshot.tape)
        session.prefix_len = snapshot.prefix_len

    # -- tokenizer ------------------------------------------------------------------------------

    async def model_for(self, handle: str, spec: ModelSpec | None) -> EngineModel:
        loaded = self.get(handle).model if handle else await self._load(spec)  # type: ignore[arg-type]
        return await self._worker.call(self._model, loaded)

    async def tokenize(self, model: EngineModel, text: str, add_special: bool) -> list[int]:
        return await self._worker.call(model.tokenize, text, add_special)

    async def detokenize(self, model: EngineModel, ids: list[int]) -> str:
        vocab = model.facts.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidArgument(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        return await self._worker.call(model.detokenize, ids)
