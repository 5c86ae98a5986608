"""Loaded models: loading once per model (single flight, within a load timeout), several models
resident under a weights budget (the least recently used idle one unloaded first, its sessions
parked), explicit and idle unloads, and the memory the weights and live sessions' KV take.

The table of loaded models is written on the loop only (entries are never removed while the
daemon runs; an unloaded model keeps its entry with ``engine = None``); an entry's ``engine``,
``generation``, ``loads`` and ``last_load_s`` are written on the engine thread only, where every
load and unload runs (see ``_loading`` for how a load is shared and timed out).

The budget. Before a model's weights load, the resident models must leave room for them: at
most ``max_loaded`` models resident (0 = no limit), and with a memory limit
(``MemoryBudget.limit_bytes``, ``--memory-limit``), resident weights plus sessions' KV plus the
new weights within it. Free RAM is not a reason to unload (mapped weights stay in the page
cache either way); it stays what admission judges a new session by. While over, the least
recently used *idle* model is unloaded (idle: no operation runs on any of its sessions and
nothing borrows its engine; recency: the latest use of the model or any of its sessions); its
live sessions park first, so each restores on its next use with exactly its KV. When no
resident model is idle the load is refused: ``overloaded`` (retry shortly: busy models become
idle) for the count, ``insufficient_memory`` with the sums for the memory limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from modeld.backends._base import Backend, EngineModel
from modeld.engine._scheduler import EngineScheduler
from modeld.models._capacity import MemoryBudget, capacity_of
from modeld.models._facts import ModelSpec
from modeld.sessions._loading import DEFAULT_LOAD_TIMEOUT_S, Flight
from modeld.sessions._prefix_index import PrefixIndex
from modeld.sessions._session import Session
from modeldconn._errors import InsufficientMemory, InvalidArgument, ModelInUse, Overloaded
from modeldconn._types import Capacity

__all__ = ["LoadMetrics", "LoadedModel", "ModelBusy", "ModelPool"]

log = logging.getLogger("modeld.sessions")


class LoadMetrics(Protocol):
    """Where loads and unloads are counted (``modeld._metrics.Metrics`` is one)."""

    def model_loaded(self, model: str, seconds: float) -> None: ...

    def model_load_ended(self, outcome: str) -> None: ...

    def model_unloaded(self, reason: str) -> None: ...


class _NoMetrics:
    def model_loaded(self, model: str, seconds: float) -> None:
        pass

    def model_load_ended(self, outcome: str) -> None:
        pass

    def model_unloaded(self, reason: str) -> None:
        pass


class ModelBusy(Overloaded):
    """A model cannot be unloaded this instant: an operation runs on one of its sessions, or
    its engine is borrowed (tokenizing); retry shortly. (Live sessions that may not be parked
    are ``ModelInUse``: retrying does not help.)"""


@dataclass(eq=False)
class LoadedModel:
    spec: ModelSpec
    #: None until loaded, and again once unloaded; engine thread writes it
    engine: EngineModel | None = None
    #: open sessions on it (loop)
    sessions: int = 0
    last_used: float = field(default_factory=time.monotonic)
    #: which of its sessions hold which prefixes, by session id (engine thread)
    index: PrefixIndex[str] = field(default_factory=PrefixIndex)
    #: loop-side users of ``engine`` off the engine thread (tokenizing); never unloaded while
    #: any (guarded by the pool's lock)
    borrowers: int = 0
    #: bumped by every load and unload (engine thread)
    generation: int = 0
    #: times its weights were loaded, and how long the last load took, seconds (engine thread)
    loads: int = 0
    last_load_s: float = 0.0

    @property
    def alias(self) -> str:
        """The catalog alias it was loaded under ("" when named otherwise)."""
        return self.spec.alias.name if self.spec.alias is not None else ""


class ModelPool:
    """:param in_use_by_sessions: bytes of KV that live sessions and the parking RAM tier hold.
    :param sessions_of: the open sessions of a model (safe from the engine thread).
    :param park: engine thread: park one live, idle session (``ParkingLot.park``).
    :param max_loaded: models resident at once; 0 = no limit.
    :param load_timeout_s: a load's timeout when neither the call nor the alias names one;
        0 = none.
    """

    def __init__(
        self,
        backend: Backend,
        scheduler: EngineScheduler,
        budget: MemoryBudget,
        in_use_by_sessions: Callable[[], int],
        *,
        sessions_of: Callable[[LoadedModel], Sequence[Session]] = lambda _: (),
        park: Callable[[Session], None] | None = None,
        max_loaded: int = 0,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        metrics: LoadMetrics | None = None,
    ) -> None:
        self._backend = backend
        self._scheduler = scheduler
        self._budget = budget
        self._in_use_by_sessions = in_use_by_sessions
        self._sessions_of = sessions_of
        self._park = park
        self.max_loaded = max_loaded
        self.load_timeout_s = load_timeout_s
        self._metrics: LoadMetrics = metrics if metrics is not None else _NoMetrics()
        self._models: dict[tuple[str, str], LoadedModel] = {}
        #: guards ``borrowers`` against an unload deciding at the same instant
        self._borrow_lock = threading.Lock()
        #: loads in progress, by model key (loop)
        self._flights: dict[tuple[str, str], Flight] = {}
        #: counted on the engine thread
        self.loads = 0
        #: bytes held outside this pool that count against the same budget: embedding sides'
        #: own weights and contexts (set by ``Embeddings``; safe from any thread)
        self.held_by_embeddings: Callable[[], int] = lambda: 0

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def weights_in(self, spec: ModelSpec) -> bool:
        loaded = self._models.get(spec.key)
        return loaded is not None and loaded.engine is not None

    def in_use(self) -> int:
        """Bytes modeld spends now: resident weights plus what sessions and embedding sides
        hold, and the KV of empty contexts engines keep for reuse (:meth:`pooled_bytes`)."""
        weights = sum(m.spec.facts.file_bytes for m in self.loaded() if m.engine)
        return (
            weights + self._in_use_by_sessions() + self.held_by_embeddings() + self.pooled_bytes()
        )

    def pooled_bytes(self) -> int:
        """KV bytes of empty contexts the engines keep for reuse: in use, but reclaimable
        (freed by :meth:`make_kv_room` before a context that needs the room). Any thread."""
        return sum(engine.pooled_bytes() for m in self.loaded() if (engine := m.engine))

    def make_kv_room(
        self, required: int, opening: tuple[LoadedModel, int, str] | None = None
    ) -> None:
        """Engine thread: free the engines' pooled contexts unless ``required`` more bytes of
        KV fit beside them (admission counted them as free). ``opening``: the model, n_ctx
        and KV cache type of the session about to open, whose pooled context of that size
        stays (it takes it, needing no new memory)."""
        if self.pooled_bytes() and self._budget.free_bytes(self.in_use()) < required:
            for m in self.loaded():
                if m.engine is not None:
                    keep = opening[1:] if opening is not None and opening[0] is m else None
                    m.engine.drop_pooled(keep)

    def capacity(self, spec: ModelSpec, kv_cache_type: str = "f16") -> Capacity:
        """What fits now, with K and V cached as ``kv_cache_type`` (pooled contexts count as
        free: a new context frees them first, :meth:`make_kv_room`)."""
        free = self._budget.free_bytes(self.in_use() - self.pooled_bytes())
        return capacity_of(
            spec.facts, free, weights_resident=self.weights_in(spec), kv_cache_type=kv_cache_type
        )

    def admit(
        self, spec: ModelSpec, requested_n_ctx: int, kv_cache_type: str = "f16"
    ) -> tuple[int, Capacity]:
        """The n_ctx a new session of ``spec`` gets (``requested_n_ctx``, or the default when 0),
        its KV cached as ``kv_cache_type``, and the capacity it was judged against. When
        ``spec``'s weights are out, the weights of idle resident models count as free under the
        memory limit (loading unloads them).

        :raises InvalidArgument: ``requested_n_ctx`` over the model's trained context.
        :raises InsufficientMemory: its KV (and the weights, if not in) do not fit, with the sums.
        """
        capacity = self.capacity(spec, kv_cache_type)
        model_max = capacity.model_max_context
        if requested_n_ctx > model_max:
            raise InvalidArgument(
                f"n_ctx {requested_n_ctx} exceeds the model's trained context {model_max}",
                field="n_ctx",
                model_max_context=model_max,
            )
        n_ctx = requested_n_ctx or capacity.default_context
        per_token = capacity.kv_bytes_per_token
        pending_weights = 0 if self.weights_in(spec) else spec.facts.file_bytes
        required = n_ctx * per_token + pending_weights
        free = capacity.free_bytes
        if pending_weights and self._budget.limit_bytes:
            evictable = sum(m.spec.facts.file_bytes for m in self._idle(exclude=spec.key))
            free = self._budget.free_bytes(self.in_use() - evictable - self.pooled_bytes())
        if n_ctx < 1 or required > free:
            raise InsufficientMemory(
                f"n_ctx {n_ctx} needs {n_ctx} x {per_token} B of KV"
                + (f" + {pending_weights} B of weights" if pending_weights else "")
                + f" = {required} B; {free} B free "
                f"(fits {capacity.memory_fit_context} tokens)",
                required=required,
                free=free,
                n_ctx=n_ctx,
                kv_bytes_per_token=per_token,
                memory_fit_context=capacity.memory_fit_context,
            )
        return n_ctx, capacity

    # -- loading ------------------------------------------------------------------------------

    def load_timeout_for(self, spec: ModelSpec, requested_s: float = 0.0) -> float:
        """Seconds a load of ``spec`` may take: ``requested_s`` when > 0, else the alias's
        ``load_timeout_s`` when > 0, else the daemon's (0 = none)."""
        if requested_s > 0:
            return requested_s
        if spec.alias is not None and spec.alias.load_timeout_s > 0:
            return spec.alias.load_timeout_s
        return self.load_timeout_s

    def _entry(self, spec: ModelSpec) -> LoadedModel:
        loaded = self._models.get(spec.key)
        if loaded is None:
            loaded = self._models[spec.key] = LoadedModel(spec)
        return loaded

    def entry(self, spec: ModelSpec) -> LoadedModel | None:
        """``spec``'s entry if it was ever loaded (loop)."""
        return self._models.get(spec.key)

    async def load(self, spec: ModelSpec, timeout_s: float = 0.0) -> LoadedModel:
        """The model's entry with its weights in. Concurrent first uses share one load (see
        ``_loading``); ``timeout_s`` > 0 is this call's load timeout (else the alias's or the
        daemon's: :meth:`load_timeout_for`).

        :raises ModelLoadTimeout: the load (or this caller's wait) passed its timeout; nothing
            of the load stays resident.
        :raises ModelLoadFailed: the engine could not load the file.
        :raises Overloaded: ``max_loaded`` models are resident and none is idle.
        :raises InsufficientMemory: the weights do not fit the memory limit, even after
            unloading every idle model (with the sums).
        """
        loaded = self._entry(spec)
        loaded.last_used = time.monotonic()
        if loaded.engine is None:
            await self._flight(loaded, timeout_s)
        return loaded

    async def _flight(self, loaded: LoadedModel, timeout_s: float) -> None:
        """Start ``loaded``'s load, or join the one in progress, and wait for it."""
        key = loaded.spec.key
        flight = self._flights.get(key)
        if flight is not None:
            await flight.wait(timeout_s)  # a joiner's own timeout ends only its own wait
            return
        name = loaded.spec.facts.name
        flight = self._flights[key] = Flight(
            name,
            self.load_timeout_for(loaded.spec, timeout_s),
            on_expire=lambda: self._metrics.model_load_ended("timeout"),
        )

        def landed(_: asyncio.Future[None]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]

        flight.outcome.add_done_callback(landed)
        job = asyncio.ensure_future(self._scheduler.call(self._flown, loaded, flight))
        job.add_done_callback(flight.finish)
        await flight.wait()

    def _flown(self, loaded: LoadedModel, flight: Flight) -> None:
        """Engine thread: a flight's load (nothing when it expired while queued)."""
        if not flight.running:
            return
        if loaded.engine is None:
            self._load_now(loaded, flight)
        else:  # loaded meanwhile by an engine job that needed it
            flight.settle()

    def engine_of(self, loaded: LoadedModel) -> EngineModel:
        """Engine thread: the model's engine, (re)loading the weights if they are not in (the
        budget applies; no timeout: the caller's operation is already running).

        :raises ModelLoadFailed: the engine could not load the file.
        :raises Overloaded / InsufficientMemory: see :meth:`load`.
        """
        loaded.last_used = time.monotonic()
        if loaded.engine is None:
            self._load_now(loaded, None)
        assert loaded.engine is not None
        return loaded.engine

    def _load_now(self, loaded: LoadedModel, flight: Flight | None) -> None:
        """Engine thread: make room, load, and install the engine unless ``flight`` expired
        meanwhile (then the engine is closed at once: nothing stays resident)."""
        self._make_room(loaded)
        name = loaded.spec.facts.name
        started = time.perf_counter()
        try:
            engine = self._backend.load(loaded.spec)
        except BaseException:
            self._metrics.model_load_ended("failed")
            raise
        took = time.perf_counter() - started
        if flight is not None and not flight.settle():
            engine.close()
            log.warning(
                "loading %s took %.2f s, past its %g s load timeout: closed, nothing kept",
                name,
                took,
                flight.timeout_s,
            )
            return
        loaded.engine = engine
        loaded.generation += 1
        loaded.loads += 1
        loaded.last_load_s = took
        self.loads += 1
        self._metrics.model_loaded(name, took)
        self._metrics.model_load_ended("ok")
        log.info(
            "loaded %s (%s) in %.2f s, generation %d",
            name,
            loaded.spec.facts.digest[:12],
            took,
            loaded.generation,
        )

    # -- the budget -----------------------------------------------------------------------------

    def _recency(self, loaded: LoadedModel) -> float:
        return max([loaded.last_used, *(s.last_used for s in self._sessions_of(loaded))])

    def _idle(self, exclude: tuple[str, str] | None = None) -> list[LoadedModel]:
        """Resident models nothing uses now (no operation on their sessions, no borrower)."""
        return [
            m
            for m in self.loaded()
            if m.engine is not None
            and m.spec.key != exclude
            and not m.borrowers
            and not any(s.busy for s in self._sessions_of(m))
        ]

    def _over_budget(self, loaded: LoadedModel) -> str:
        """Why ``loaded``'s weights cannot come in now ("" when they can)."""
        resident = [m for m in self.loaded() if m.engine is not None and m is not loaded]
        if self.max_loaded and len(resident) >= self.max_loaded:
            return f"{len(resident)} models are resident (--max-loaded-models {self.max_loaded})"
        limit = self._budget.limit_bytes
        need = loaded.spec.facts.file_bytes
        in_use = self.in_use()
        if limit and in_use + need > limit:
            kv, embedding = self._in_use_by_sessions(), self.held_by_embeddings()
            weights = in_use - kv - embedding
            return (
                f"loading {loaded.spec.facts.name} needs {need} B of weights; "
                f"{weights} B of weights, {kv} B of session KV and {embedding} B of embedding "
                f"models and contexts are in use = {in_use + need} B > --memory-limit {limit} B"
            )
        return ""

    def _make_room(self, loaded: LoadedModel) -> None:
        """Engine thread: unload least recently used idle models until ``loaded`` fits.

        :raises Overloaded: the count is over and no resident model is idle.
        :raises InsufficientMemory: the memory limit is over and no resident model is idle.
        :raises ParkingFull: a victim's session could not be parked (the victim stays loaded).
        """
        skipped: set[int] = set()
        if self._over_budget(loaded):  # pooled contexts go before any model does
            self.make_kv_room(loaded.spec.facts.file_bytes)
        while why := self._over_budget(loaded):
            idle = [m for m in self._idle(exclude=loaded.spec.key) if id(m) not in skipped]
            if not idle:
                if "--memory-limit" in why:
                    need = loaded.spec.facts.file_bytes
                    raise InsufficientMemory(
                        f"{why}, and no loaded model is idle to unload",
                        required=need,
                        free=self._budget.free_bytes(self.in_use()),
                    )
                raise Overloaded(
                    f"cannot load {loaded.spec.facts.name}: {why}, and every one is in use; "
                    "retry shortly",
                    retry_after_s=1,
                )
            victim = min(idle, key=self._recency)
            try:
                self._unload_now(victim, "lru", park=True)
            except ModelBusy:
                skipped.add(id(victim))

    # -- unloading ------------------------------------------------------------------------------

    def _unload_now(self, loaded: LoadedModel, reason: str, *, park: bool) -> tuple[bool, int]:
        """Engine thread: free the weights, parking its live sessions first when ``park``.
        Returns (unloaded: False when they were out, sessions parked).

        :raises ModelBusy: an operation runs on one of its sessions, or it is borrowed.
        :raises ModelInUse: a session of it is live and not ``park`` (or parking is off).
        :raises ParkingFull: a session could not be parked (the model stays loaded).
        """
        if loaded.engine is None:
            return False, 0
        name = loaded.spec.facts.name
        sessions = self._sessions_of(loaded)
        busy = sum(1 for s in sessions if s.busy)
        if busy or loaded.borrowers:
            raise ModelBusy(
                f"{name} is in use ({busy} sessions with an operation running, "
                f"{loaded.borrowers} tokenizing); retry shortly",
                retry_after_s=0.5,
            )
        live = [s for s in sessions if s.engine is not None]
        if live and (not park or self._park is None):
            raise ModelInUse(
                f"{name} has {len(live)} sessions holding live KV"
                + ("; unload with park_sessions to park them first" if not park else ""),
                name=name,
                live_sessions=len(live),
            )
        for session in live:
            assert self._park is not None
            self._park(session)
        with self._borrow_lock:  # a borrower reads the engine from another thread
            if loaded.borrowers:
                raise ModelBusy(f"{name} is borrowed; retry shortly", retry_after_s=0.5)
            engine, loaded.engine = loaded.engine, None
        engine.close()
        loaded.generation += 1
        self._metrics.model_unloaded(reason)
        log.info(
            "unloaded %s (%s), %d sessions parked, generation %d",
            name,
            reason,
            len(live),
            loaded.generation,
        )
        return True, len(live)

    async def unload(self, spec: ModelSpec, park: bool) -> tuple[bool, int, int]:
        """Free ``spec``'s weights now, parking its live sessions when ``park`` (each restores
        on its next use); a load in progress finishes first. Returns (unloaded: False when
        they were not in, sessions parked, the model's generation after).

        :raises ModelBusy: an operation runs on one of its sessions; retry shortly.
        :raises ModelInUse: live sessions and not ``park``.
        :raises ParkingFull: a session could not be parked (nothing was unloaded).
        """
        loaded = self._models.get(spec.key)
        if loaded is None:
            return False, 0, 0
        flight = self._flights.get(spec.key)
        if flight is not None:
            with contextlib.suppress(Exception):
                await flight.wait()
        unloaded, parked = await self._scheduler.call(
            lambda: self._unload_now(loaded, "explicit", park=park)
        )
        return unloaded, parked, loaded.generation

    @contextlib.asynccontextmanager
    async def borrowed(self, loaded: LoadedModel) -> AsyncIterator[EngineModel]:
        """The model's engine for work off the engine thread that only reads the model
        (tokenizing, rendering chat templates): its weights stay in until the block ends.

        :raises ModelLoadFailed / ModelLoadTimeout / Overloaded / InsufficientMemory: the
            weights were out and could not be loaded again (see :meth:`load`).
        """
        with self._borrow_lock:
            loaded.borrowers += 1
            engine = loaded.engine
        try:
            if engine is None:  # out: load them (one flight); borrowed, they stay in
                loaded.last_used = time.monotonic()
                await self._flight(loaded, 0.0)
                engine = loaded.engine
                assert engine is not None  # a borrowed model is never unloaded
            yield engine
        finally:
            with self._borrow_lock:
                loaded.borrowers -= 1

    async def unload_idle(self, idle_s: float, live: Callable[[LoadedModel], bool]) -> None:
        """Free the weights of models no live session uses and nobody used for ``idle_s``;
        their parked sessions stay restorable (the weights load again first)."""
        now = time.monotonic()
        for loaded in self.loaded():
            if loaded.engine is not None and not live(loaded) and now - loaded.last_used > idle_s:
                with contextlib.suppress(ModelBusy, ModelInUse):
                    await self._scheduler.call(
                        lambda m=loaded: self._unload_now(m, "idle", park=False)
                    )

    async def close_all(self, models: Iterable[LoadedModel] | None = None) -> None:
        for loaded in list(models if models is not None else self.loaded()):
            if loaded.engine is not None:
                await self._scheduler.call(loaded.engine.close)
                loaded.engine = None
        self._models.clear()
