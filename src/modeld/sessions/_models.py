"""Loaded models: loading once per model (single flight), unloading idle weights, and the
memory the weights and live sessions' KV take.

The table of loaded models is written on the loop only (entries are never removed while the
daemon runs; an unloaded model keeps its entry with ``engine = None``); an entry's ``engine``
is written on the engine thread only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from modeld.backends._base import Backend, EngineModel
from modeld.engine._scheduler import EngineScheduler
from modeld.models._capacity import MemoryBudget, capacity_of
from modeld.models._facts import ModelSpec
from modeld.sessions._prefix_index import PrefixIndex
from modeldconn._errors import InsufficientMemory, InvalidArgument
from modeldconn._types import Capacity

__all__ = ["LoadedModel", "ModelPool"]

log = logging.getLogger("modeld.sessions")


@dataclass(eq=False)
class LoadedModel:
    spec: ModelSpec
    #: None until loaded, and again once unloaded after a long idle; engine thread writes it
    engine: EngineModel | None = None
    #: open sessions on it (loop)
    sessions: int = 0
    last_used: float = field(default_factory=time.monotonic)
    #: which of its sessions hold which prefixes, by session id (engine thread)
    index: PrefixIndex[str] = field(default_factory=PrefixIndex)
    #: loop-side users of ``engine`` off the engine thread (tokenizing); never unloaded while
    #: any (guarded by the pool's lock)
    borrowers: int = 0


class ModelPool:
    """:param in_use_by_sessions: bytes of KV that live sessions and the parking RAM tier hold."""

    def __init__(
        self,
        backend: Backend,
        scheduler: EngineScheduler,
        budget: MemoryBudget,
        in_use_by_sessions: Callable[[], int],
    ) -> None:
        self._backend = backend
        self._scheduler = scheduler
        self._budget = budget
        self._in_use_by_sessions = in_use_by_sessions
        self._models: dict[tuple[str, str], LoadedModel] = {}
        #: guards ``borrowers`` against an unload deciding at the same instant
        self._borrow_lock = threading.Lock()
        self._loading: dict[tuple[str, str], asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        #: counted on the engine thread
        self.loads = 0

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def weights_in(self, spec: ModelSpec) -> bool:
        loaded = self._models.get(spec.key)
        return loaded is not None and loaded.engine is not None

    def in_use(self) -> int:
        """Bytes modeld spends now: resident weights plus what sessions hold."""
        weights = sum(m.spec.facts.file_bytes for m in self.loaded() if m.engine)
        return weights + self._in_use_by_sessions()

    def capacity(self, spec: ModelSpec) -> Capacity:
        free = self._budget.free_bytes(self.in_use())
        return capacity_of(spec.facts, free, weights_resident=self.weights_in(spec))

    def admit(self, spec: ModelSpec, requested_n_ctx: int) -> tuple[int, Capacity]:
        """The n_ctx a new session of ``spec`` gets (``requested_n_ctx``, or the default when 0),
        and the capacity it was judged against.

        :raises InvalidArgument: ``requested_n_ctx`` over the model's trained context.
        :raises InsufficientMemory: its KV (and the weights, if not in) do not fit, with the sums.
        """
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
        pending_weights = 0 if self.weights_in(spec) else spec.facts.file_bytes
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
        return n_ctx, capacity

    async def load(self, spec: ModelSpec) -> LoadedModel:
        """The model's entry with its weights in; concurrent first uses load it once."""
        async with self._loading[spec.key]:
            loaded = self._models.get(spec.key)
            if loaded is None:
                loaded = self._models[spec.key] = LoadedModel(spec)
            if loaded.engine is None:
                await self._scheduler.call(self.engine_of, loaded)
            return loaded

    def engine_of(self, loaded: LoadedModel) -> EngineModel:
        """Engine thread: the model's engine, (re)loading the weights if they are not in.

        :raises ModelLoadFailed: the engine could not load the file.
        """
        loaded.last_used = time.monotonic()
        if loaded.engine is None:
            started = time.perf_counter()
            loaded.engine = self._backend.load(loaded.spec)
            self.loads += 1
            log.info(
                "loaded %s (%s) in %.2f s",
                loaded.spec.facts.name,
                loaded.spec.facts.digest[:12],
                time.perf_counter() - started,
            )
        return loaded.engine

    @contextlib.asynccontextmanager
    async def borrowed(self, loaded: LoadedModel) -> AsyncIterator[EngineModel]:
        """The model's engine for work off the engine thread that only reads the model
        (tokenizing, rendering chat templates): its weights stay in until the block ends.

        :raises ModelLoadFailed: the weights were out and could not be loaded again.
        """
        with self._borrow_lock:
            loaded.borrowers += 1
            engine = loaded.engine
        try:
            if engine is None:  # unloaded after idling: load on the engine thread, as always
                engine = await self._scheduler.call(self.engine_of, loaded)
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
                await self._scheduler.call(self._unload, loaded, live)

    def _unload(self, loaded: LoadedModel, live: Callable[[LoadedModel], bool]) -> None:
        with self._borrow_lock:  # a borrower reads the engine from another thread
            if loaded.engine is None or live(loaded) or loaded.borrowers:
                return
            engine, loaded.engine = loaded.engine, None
        engine.close()
        log.info("unloaded %s after idling", loaded.spec.facts.name)

    async def close_all(self, models: Iterable[LoadedModel] | None = None) -> None:
        for loaded in list(models if models is not None else self.loaded()):
            if loaded.engine is not None:
                await self._scheduler.call(loaded.engine.close)
                loaded.engine = None
        self._models.clear()
