"""The Embed verb: validating a batch, splitting it into engine steps, pooling, normalizing.

Embedding sides of models live here, apart from sessions: an embedding-only model (BERT) is
loaded for them alone, and its contexts and weights are freed once it has not embedded for
``idle_s``. A generative model's embedding contexts use the weights its sessions use
(``ModelPool``), borrowed for the length of a call, and are freed when the call ends: the pool
may unload those weights whenever no call borrows them, and a context never outlives them.

A batch runs as a stream on the engine thread: each step is one engine call over as many inputs
as fit (``max_inputs``, ``step_tokens``), and between steps every other client's work takes its
turn, so a batch of 256 texts delays a decoding session by one step at a time, never by the
whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from modeld.backends._base import Backend, EmbeddingBackend, EmbeddingEngine, EngineModel
from modeld.engine._scheduler import EngineScheduler
from modeld.models._facts import POOLINGS, ModelSpec
from modeld.sessions._models import ModelPool
from modeldconn._errors import (
    CapabilityMismatch,
    ContextOverflow,
    InsufficientMemory,
    InvalidArgument,
    UnsupportedFeature,
)
from modeldconn._types import EmbeddingModelStatus, EmbedUsage

__all__ = ["MAX_EMBED_INPUTS", "EmbedRequest", "EmbedResult", "Embeddings"]

log = logging.getLogger("modeld.embeddings")

#: inputs one Embed call may carry
MAX_EMBED_INPUTS = 4096
#: an embedding side unused this long frees its contexts (and its own weights)
IDLE_S = 60.0


@dataclass(frozen=True)
class EmbedRequest:
    """One Embed call: each input is text (str) or token ids (a tuple of ints)."""

    inputs: tuple[str | tuple[int, ...], ...]
    normalize: bool = True
    truncate: bool = False
    pooling: str = ""  #: "" = the model's


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  #: float32, shape (len(inputs), dims)
    pooling: str
    normalized: bool
    usage: EmbedUsage
    engine_calls: int


@dataclass(eq=False)
class _Side:
    spec: ModelSpec
    engine: EmbeddingEngine | None = None
    #: the generative model whose weights ``engine`` uses (None: its own weights)
    shared: EngineModel | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Embed calls running now; never freed while any
    users: int = 0


def _check_inputs(request: EmbedRequest, vocab_size: int) -> None:
    """:raises InvalidArgument: no inputs, too many, an empty one, an id out of range, or a
    pooling that is not one of POOLINGS."""
    if not request.inputs:
        raise InvalidArgument(
            "inputs is empty: send at least one text or token list", field="inputs"
        )
    if len(request.inputs) > MAX_EMBED_INPUTS:
        raise InvalidArgument(
            f"{len(request.inputs)} inputs; at most {MAX_EMBED_INPUTS} per call",
            field="inputs",
            inputs=len(request.inputs),
            limit=MAX_EMBED_INPUTS,
        )
    if request.pooling and request.pooling not in POOLINGS:
        raise InvalidArgument(
            f"pooling {request.pooling!r} is not one of {', '.join(POOLINGS)}", field="pooling"
        )
    for i, value in enumerate(request.inputs):
        if len(value) == 0:
            raise InvalidArgument(f"inputs[{i}] is empty", field=f"inputs[{i}]", input=i)
        if isinstance(value, tuple):
            bad = next((t for t in value if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise InvalidArgument(
                    f"inputs[{i}] holds token id {bad}, outside 0..{vocab_size - 1}",
                    field=f"inputs[{i}]",
                    input=i,
                )


def _plan(engine: EmbeddingEngine, lengths: Sequence[int]) -> list[range]:
    """Consecutive inputs grouped into steps that each fit one engine call."""
    steps: list[range] = []
    start = 0
    for i in range(1, len(lengths) + 1):
        group = lengths[start:i]
        fits = len(group) <= engine.max_inputs and engine.step_cost(group) <= engine.step_tokens
        if not fits:
            steps.append(range(start, i - 1))
            start = i - 1
    steps.append(range(start, len(lengths)))
    return steps


class Embeddings:
    def __init__(
        self, backend: Backend, scheduler: EngineScheduler, pool: ModelPool, idle_s: float = IDLE_S
    ) -> None:
        self._backend = backend
        self._scheduler = scheduler
        self._pool = pool
        self.idle_s = idle_s
        self._sides: dict[tuple[str, str], _Side] = {}
        self._reaper: asyncio.TimerHandle | None = None
        # what embedding sides hold counts in the pool's memory budget: sessions and model
        # loads are judged with it, and it is judged with theirs (``admit``)
        pool.held_by_embeddings = self.bytes_held

    def bytes_held(self) -> int:
        """Bytes the embedding sides hold now: an embedding-only model's own weights (a
        generative model's are its pool entry's) and every side's contexts (their estimated
        largest size, ``EmbeddingEngine.held_bytes``). Safe from any thread."""
        total = 0
        for side in list(self._sides.values()):
            engine = side.engine
            if engine is None:
                continue
            if side.shared is None:
                total += side.spec.facts.file_bytes
            total += engine.held_bytes()
        return total

    def admit(self, spec: ModelSpec, engine: EmbeddingEngine, pooling: str) -> None:
        """Refuse a call whose new context would not fit the budget (nothing to do when its
        context is alive).

        :raises InsufficientMemory: with ``required`` (the context) and ``free``: the
            ``--memory-limit`` (or free RAM) less weights, session KV and embedding sides.
        """
        self._check_room(spec, engine.context_bytes(pooling), f"a {pooling}-pooling context")

    def _check_room(self, spec: ModelSpec, need: int, what: str) -> None:
        if need <= 0:
            return
        free = self._pool.capacity(spec).free_bytes
        if need > free:
            raise InsufficientMemory(
                f"embedding with {spec.facts.name} needs {what} of {need} B; {free} B free "
                "(the memory limit, or free RAM, less resident weights, session KV and "
                "embedding contexts)",
                required=need,
                free=free,
            )

    @property
    def scheduler(self) -> EngineScheduler:
        return self._scheduler

    @property
    def pool(self) -> ModelPool:
        return self._pool

    @contextlib.asynccontextmanager
    async def side(self, spec: ModelSpec) -> AsyncIterator[EmbeddingEngine]:
        """``spec``'s embedding side for one call (Rerank's cross-encoder uses it too): made
        on first use, counted as in use until the block ends, freed after idling as Embed's.

        :raises UnsupportedFeature: this backend does not embed (or rank) this model.
        :raises ModelLoadFailed: the engine could not load the model.
        :raises InsufficientMemory: an embedding-only model's weights do not fit the budget.
        """
        side = self._sides.get(spec.key)
        if side is None:
            side = self._sides[spec.key] = _Side(spec)
        side.users += 1
        try:
            async with self._engine(side) as engine:
                yield engine
        finally:
            side.users -= 1
            side.last_used = time.monotonic()
            self._arm_reaper()

    def status(self) -> list[EmbeddingModelStatus]:
        """Every model with an embedding side (safe from the loop; counts may lag a step)."""
        return [
            EmbeddingModelStatus(
                name=side.spec.facts.name,
                digest=side.spec.facts.digest,
                contexts=side.engine.contexts if side.engine is not None else 0,
                weights_loaded=side.engine is not None,
                shares_weights=side.shared is not None,
            )
            for side in list(self._sides.values())
        ]

    def contexts(self) -> int:
        return sum(s.contexts for s in self.status())

    async def preload(self, spec: ModelSpec) -> None:
        """Load an embedding-only model's weights now (``modeld serve --model``).

        :raises ModelLoadFailed: the engine could not load the model.
        :raises UnsupportedFeature: this backend does not embed it.
        :raises InsufficientMemory: its weights do not fit the budget."""
        side = self._sides.setdefault(spec.key, _Side(spec))
        async with self._engine(side):
            side.last_used = time.monotonic()
        self._arm_reaper()

    async def embed(self, spec: ModelSpec, request: EmbedRequest) -> EmbedResult:
        """One vector per input.

        :raises InvalidArgument: see ``_check_inputs`` (field ``inputs``/``inputs[i]``/``pooling``).
        :raises CapabilityMismatch: the model cannot embed (its ``tasks``).
        :raises UnsupportedFeature: this backend cannot pool this model's hidden states.
        :raises ContextOverflow: an input is longer than the model takes and ``truncate`` is
            off (metadata ``input``: its index, ``tokens``, ``n_ctx``).
        :raises ModelLoadFailed: the engine could not load the model.
        :raises InsufficientMemory: its weights (an embedding-only model's) or a new context
            do not fit the memory budget, with ``required`` and ``free``.
        """
        facts = spec.facts
        if "embed" not in facts.tasks:
            raise CapabilityMismatch(
                f"{facts.name} cannot embed (tasks: {', '.join(facts.tasks)})",
                model=facts.name,
                task="embed",
                tasks=",".join(facts.tasks),
            )
        _check_inputs(request, facts.vocab_size or 2**31)
        pooling = request.pooling or facts.pooling
        side = self._sides.get(spec.key)
        if side is None:
            side = self._sides[spec.key] = _Side(spec)
        side.users += 1
        try:
            async with self._engine(side) as engine:
                self.admit(spec, engine, pooling)
                vectors, usage, calls = await self._run(engine, request, pooling)
        finally:
            side.users -= 1
            side.last_used = time.monotonic()
            self._arm_reaper()
        if request.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, np.float32(1e-12))
        return EmbedResult(vectors.astype(np.float32), pooling, request.normalize, usage, calls)

    @contextlib.asynccontextmanager
    async def _engine(self, side: _Side) -> AsyncIterator[EmbeddingEngine]:
        backend = self._backend
        if not hasattr(backend, "embedder"):
            raise UnsupportedFeature(f"the {backend.name} backend does not embed")
        maker = cast(EmbeddingBackend, backend)
        if "generate" not in side.spec.facts.tasks:
            async with side.lock:
                if side.engine is None:
                    self._check_room(side.spec, side.spec.facts.file_bytes, "its weights")
                    side.engine = await self._scheduler.call(maker.embedder, side.spec, None)
            yield side.engine
            return
        loaded = await self._pool.load(side.spec)
        async with self._pool.borrowed(loaded) as model, side.lock:
            if side.engine is None or side.shared is not model:

                def make() -> EmbeddingEngine:
                    if side.engine is not None:  # over weights that were unloaded since
                        side.engine.release()
                    return maker.embedder(side.spec, model)

                side.engine = await self._scheduler.call(make)
                side.shared = model
            try:
                yield side.engine
            finally:
                # the pool may unload these weights once the call ends (its own idle rule),
                # and a context must never outlive its weights: free it now
                await self._scheduler.call(side.engine.release)

    async def _run(
        self, engine: EmbeddingEngine, request: EmbedRequest, pooling: str
    ) -> tuple[np.ndarray, EmbedUsage, int]:
        result: tuple[np.ndarray, EmbedUsage, int] | None = None
        async for item in self._scheduler.stream(self._steps(engine, request, pooling)):
            result = item
        assert result is not None
        return result

    def _steps(
        self, engine: EmbeddingEngine, request: EmbedRequest, pooling: str
    ) -> Generator[tuple[np.ndarray, EmbedUsage, int] | None, None, None]:
        """Engine thread: tokenize (one turn), then one engine call per turn; the last item is
        the result, the ones before it None."""
        limit = engine.max_tokens
        inputs: list[list[int]] = []
        cut: list[int] = []
        for i, value in enumerate(request.inputs):
            head: list[int]
            tail: list[int]
            if isinstance(value, tuple):
                head, body, tail = [], list(value), []
            else:
                head, body, tail = engine.tokenize_parts(value)
            total = len(head) + len(body) + len(tail)
            if total == 0:
                raise InvalidArgument(f"inputs[{i}] comes to no tokens", field=f"inputs[{i}]")
            over = total - limit
            if over > 0 and not request.truncate:
                raise ContextOverflow(
                    f"inputs[{i}] is {total} tokens; the model embeds at most {limit} "
                    "(send truncate: true to cut it)",
                    stage="embed",
                    input=i,
                    tokens=total,
                    resident=0,
                    additional=total,
                    n_ctx=limit,
                )
            if over > 0:
                keep = max(limit - len(head) - len(tail), 0)
                ids = (head + body[:keep] + tail)[:limit]
            else:
                ids = head + body + tail
            inputs.append(ids)
            cut.append(total - len(ids))
        lengths = [len(ids) for ids in inputs]
        steps = _plan(engine, lengths)
        yield None  # tokenizing was this turn
        out = np.empty((len(inputs), engine.dims), dtype=np.float32)
        for number, rows in enumerate(steps):
            out[rows.start : rows.stop] = engine.embed_step([inputs[i] for i in rows], pooling)
            if number + 1 < len(steps):
                yield None
        usage = EmbedUsage(tuple(lengths), sum(lengths), tuple(cut))
        yield out, usage, len(steps)

    def _arm_reaper(self) -> None:
        if self._reaper is None:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_later(self.idle_s, self._reap_soon)

    def _reap_soon(self) -> None:
        self._reaper = None
        task = asyncio.get_running_loop().create_task(self.free_idle())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def free_idle(self, idle_s: float | None = None) -> int:
        """Free the embedding sides unused for ``idle_s`` (default: the configured time);
        returns how many. Re-arms itself while any side is still open."""
        limit = self.idle_s if idle_s is None else idle_s
        freed = 0
        now = time.monotonic()
        for key, side in list(self._sides.items()):
            if side.engine is None or side.users or now - side.last_used < limit:
                continue
            async with side.lock:
                engine, side.engine = side.engine, None
                if engine is None:
                    continue
                own = side.shared is None
                await self._scheduler.call(engine.close if own else engine.release)
                side.shared = None
                del self._sides[key]
                freed += 1
                log.info("freed the embedding contexts of %s after idling", side.spec.facts.name)
        if any(s.engine is not None for s in self._sides.values()):
            self._arm_reaper()
        return freed

    async def close_all(self) -> None:
        for side in list(self._sides.values()):
            engine, side.engine = side.engine, None
            if engine is not None:
                await self._scheduler.call(engine.close if side.shared is None else engine.release)
        self._sides.clear()
