"""Tokenize, Detokenize and the end-of-generation ids, with a model's or a session's tokenizer.

Tokenizing only reads the model, so it runs on a worker thread with the model borrowed (see
``ModelPool.borrowed``), never on the engine thread: a long text never holds up other sessions'
turns. Loading weights that are out still happens on the engine thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from modeld.backends._base import EngineModel
from modeld.engine._scheduler import EngineScheduler
from modeld.models._facts import ModelSpec
from modeld.sessions._inputs import check_ids
from modeld.sessions._models import LoadedModel, ModelPool
from modeld.sessions._table import SessionTable

__all__ = ["Tokenizer"]


def _end_of_generation(model: EngineModel) -> list[int]:
    """Engine thread: the ids that end a Decode as ``eos``."""
    listed: Callable[[], list[int]] | None = getattr(model, "end_of_generation_ids", None)
    if listed is not None:  # both engines keep the set (their samplers use it)
        return [int(t) for t in listed()]
    return [t for t in range(model.facts.vocab_size) if model.is_end_of_generation(t)]


class Tokenizer:
    def __init__(self, table: SessionTable, pool: ModelPool, scheduler: EngineScheduler) -> None:
        self._table = table
        self._pool = pool
        self._scheduler = scheduler

    async def model_for(self, handle: str, spec: ModelSpec | None) -> LoadedModel:
        """A session's model (``handle``), else ``spec`` loaded.

        :raises SessionNotFound / StaleFence: a bad handle.
        :raises ModelLoadFailed: the engine could not load ``spec``."""
        if handle:
            return self._table.get(handle).model
        assert spec is not None
        return await self._pool.load(spec)

    async def tokenize(self, loaded: LoadedModel, text: str, add_special: bool) -> list[int]:
        """:raises InvalidArgument: text the tokenizer cannot take (a lone surrogate)."""
        async with self._pool.borrowed(loaded) as model:
            return await asyncio.to_thread(model.tokenize, text, add_special)

    async def detokenize(self, loaded: LoadedModel, ids: list[int]) -> str:
        """:raises InvalidArgument: an id outside the vocabulary (field ``ids``)."""
        check_ids(ids, loaded.spec.facts.vocab_size, "ids")
        async with self._pool.borrowed(loaded) as model:
            return await asyncio.to_thread(model.detokenize, ids)

    async def end_of_generation_ids(self, spec: ModelSpec) -> list[int]:
        """The ids that end a Decode as ``eos``, when the model's weights are in; [] otherwise
        (this loads nothing)."""
        loaded = next((m for m in self._pool.loaded() if m.spec.key == spec.key), None)
        if loaded is None:
            return []

        def read() -> list[int]:
            engine = loaded.engine  # read on the engine thread, which is what unloads it
            return [] if engine is None else _end_of_generation(engine)

        return await self._scheduler.call(read)
