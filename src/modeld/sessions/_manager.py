"""The session layer's facade: the RPC verbs, one operation at a time per session.

``SessionManager`` runs on the event loop. It checks handles (``_table``), admits one operation
per session (``_session``'s state machine), and hands the work to the engine thread as
generators (``_prefill``, ``_generation``) over sessions made live by ``_residency``; models are
loaded by ``_models``, snapshots kept by ``_snapshots``. Figures come from ``_stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from modeld._metrics import Metrics
from modeld.backends._base import Backend, EngineModel, EngineState
from modeld.engine._scheduler import EngineScheduler
from modeld.models._capacity import MemoryBudget
from modeld.models._catalog import ModelCatalog
from modeld.models._facts import ModelSpec
from modeld.sessions._admission import Admission
from modeld.sessions._generation import Generation
from modeld.sessions._inputs import check_ids
from modeld.sessions._models import LoadedModel, ModelPool
from modeld.sessions._parking import ParkingLot
from modeld.sessions._prefill import Prefill
from modeld.sessions._residency import Residency
from modeld.sessions._session import Session
from modeld.sessions._snapshots import Snapshot, SnapshotStore
from modeld.sessions._stats import EngineCounters, LoopCounters, Stats
from modeld.sessions._table import SessionTable
from modeld.sessions._types import DecodeOptions, DecodeStep, SessionInput
from modeldconn._errors import InvalidArgument, SessionNotFound
from modeldconn._types import Capabilities, Capacity, DecodeFinal, PrefixResult, SuffixResult

__all__ = ["ResolvedConfig", "SessionManager"]

log = logging.getLogger("modeld.sessions")
T = TypeVar("T")


@dataclass(frozen=True)
class ResolvedConfig:
    n_ctx: int
    requested_n_ctx: int
    model_max_context: int
    memory_fit_context: int
    n_threads: int
    n_batch: int


class SessionManager:
    def __init__(
        self,
        *,
        instance_id: str,
        catalog: ModelCatalog,
        backend: Backend,
        scheduler: EngineScheduler,
        budget: MemoryBudget,
        lot: ParkingLot,
        snapshots: SnapshotStore,
        metrics: Metrics,
    ) -> None:
        self._catalog = catalog
        self._backend = backend
        self._scheduler = scheduler
        self.lot = lot
        self.snapshots = snapshots
        self._metrics = metrics
        self._table = SessionTable(instance_id)
        self._pool = ModelPool(backend, scheduler, budget, self._held_by_sessions)
        self._residency = Residency(self._table, self._pool, lot)
        self._engine_counters = EngineCounters()
        self._loop_counters = LoopCounters()
        self._prefill = Prefill(self._table, self._pool, self._residency, self._engine_counters)
        self._generation = Generation(
            self._table,
            self._pool,
            self._residency,
            self._prefill,
            self._engine_counters,
            metrics,
        )
        self._clients: set[str] = set()
        self._admission = Admission(self._table, scheduler, self._free)
        self._engine_stats = Stats()
        self._publish()
        scheduler.after_job = self._publish

    # -- figures ------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Engine thread (after every job): the engine-owned figures, as one immutable value."""
        lot, counters = self.lot, self._engine_counters
        self._engine_stats = Stats(
            parked_ram_bytes=lot.ram_bytes,
            parked_disk_bytes=lot.disk_bytes,
            parks=lot.parks,
            restores=lot.restores,
            max_live_sessions=lot.max_live,
            model_loads=self._pool.loads,
            **dataclasses.asdict(counters),
        )

    def stats(self) -> Stats:
        """The figures as of now; safe from any thread (reads immutable snapshots only)."""
        table = self._table.snapshot()
        live = sum(1 for s in table.values() if s.engine is not None)
        return dataclasses.replace(
            self._engine_stats,
            sessions_open=len(table),
            sessions_live=live,
            sessions_parked=len(table) - live,
            **dataclasses.asdict(self._loop_counters),
        )

    def queue_depth(self) -> int:
        return self._scheduler.depth

    def _held_by_sessions(self) -> int:
        live = sum(s.kv_bytes for s in self._table.snapshot().values() if s.parked is None)
        return live + self.lot.ram_bytes

    # -- models -------------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._backend.capabilities

    def loaded_models(self) -> list[LoadedModel]:
        return self._pool.loaded()

    async def resolve(self, name: str, type_: str, digest: str, path: str) -> ModelSpec:
        # hashing a multi-GB file must not stall the event loop, nor queue behind the engine
        return await asyncio.to_thread(self._catalog.resolve, name, type_, digest, path)

    def capacity(self, spec: ModelSpec) -> Capacity:
        return self._pool.capacity(spec)

    async def preload(self, spec: ModelSpec) -> None:
        await self._pool.load(spec)

    async def unload_idle_models(self, idle_s: float) -> None:
        def live(loaded: LoadedModel) -> bool:
            table = self._table.snapshot().values()
            return any(s.model is loaded and s.engine is not None for s in table)

        await self._pool.unload_idle(idle_s, live)

    # -- clients ------------------------------------------------------------------------------

    def attach(self, client_id: str) -> None:
        self._clients.add(client_id)
        self._loop_counters.clients_attached = len(self._clients)

    def detach(self, client_id: str) -> int:
        """The client is gone: close every session it opened; returns how many."""
        self._clients.discard(client_id)
        self._loop_counters.clients_attached = len(self._clients)
        gone = [s for s in self._table if s.owner == client_id]
        for session in gone:
            self._close(session)
        self._loop_counters.sessions_reaped += len(gone)
        return len(gone)

    async def reap(self, *, park_after_s: float, close_after_s: float) -> None:
        """Park sessions idle longer than ``park_after_s``; close those idle past
        ``close_after_s`` (0 disables either)."""
        now = time.monotonic()
        for session in self._table:
            idle_for = now - session.last_used
            if session.busy:
                continue
            if close_after_s and idle_for > close_after_s:
                log.info("closing session %s, idle for %.0f s", session.id, idle_for)
                self._close(session)
                self._loop_counters.sessions_reaped += 1
            elif park_after_s and idle_for > park_after_s and session.engine is not None:
                await self._scheduler.call(self._residency.park_if_idle, session)

    # -- open / close -------------------------------------------------------------------------

    async def open(
        self, spec: ModelSpec, requested_n_ctx: int, owner: str = ""
    ) -> tuple[Session, ResolvedConfig]:
        """:raises InvalidArgument: ``n_ctx`` over the model's trained context.
        :raises InsufficientMemory: the KV (and weights, if not in) do not fit, with the sums.
        :raises ModelLoadFailed: the engine could not load the model."""
        n_ctx, capacity = self._pool.admit(spec, requested_n_ctx)
        loaded = await self._pool.load(spec)
        engine = await self._admission.waiting_for_room(
            lambda: self._scheduler.call(self._residency.open_context, loaded, n_ctx)
        )
        engine_model = loaded.engine
        assert engine_model is not None  # open_context loaded it
        session_id = uuid.uuid4().hex
        session = Session(session_id, self._table.handle_for(session_id), loaded, engine, n_ctx)
        session.owner = owner if owner in self._clients else ""
        self._table.add(session)
        loaded.sessions += 1
        log.info("opened session %s on %s, n_ctx %d", session_id, spec.facts.name, n_ctx)
        resolved = ResolvedConfig(
            n_ctx=n_ctx,
            requested_n_ctx=requested_n_ctx,
            model_max_context=capacity.model_max_context,
            memory_fit_context=capacity.memory_fit_context,
            n_threads=engine_model.n_threads,
            n_batch=engine_model.n_batch,
        )
        return session, resolved

    def get(self, handle: str) -> Session:
        return self._table.get(handle)

    def session_count(self) -> int:
        return len(self._table)

    async def close(self, handle: str) -> bool:
        try:
            session = self._table.get(handle)
        except SessionNotFound:
            return False  # closing twice is not an error
        if self._close(session):
            await self._scheduler.call(lambda: None)  # its release (queued first) has run
            log.info("closed session %s", session.id)
        return True

    def _close(self, session: Session) -> bool:
        """Loop: close now, or when its running operation ends; True if freed now."""
        if not session.close():
            return False  # its operation frees it when it ends
        self._free(session)
        return True

    def _free(self, session: Session) -> None:
        if not self._table.remove(session):
            return
        session.model.sessions -= 1
        # queued behind any step still running for it on the engine thread
        self._scheduler.submit(lambda: self._residency.release(session))

    async def close_all(self) -> None:
        for session in self._table:
            session.close()
            self._free(session)
        await self._scheduler.call(lambda: None)  # the releases queued above have run
        await self._pool.close_all()

    # -- EnsurePrefix / PrefillSuffix / Decode ------------------------------------------------

    async def ensure_prefix(self, handle: str, value: SessionInput) -> PrefixResult:
        async with self._admission.operation(handle) as session:
            result = await self._admission.waiting_for_room(
                lambda: self._admission.in_turns(self._prefill.ensure_prefix(session, value))
            )
        tokens = self._metrics.tokens
        tokens.labels("prefilled").inc(result.prefilled)
        tokens.labels("reused").inc(result.reused - result.shared)
        tokens.labels("shared").inc(result.shared)
        return result

    async def prefill_suffix(self, handle: str, value: SessionInput) -> SuffixResult:
        async with self._admission.operation(handle) as session:
            result = await self._admission.waiting_for_room(
                lambda: self._admission.in_turns(self._prefill.prefill_suffix(session, value))
            )
        self._metrics.tokens.labels("prefilled").inc(result.prefilled)
        return result

    async def decode(
        self, handle: str, request: DecodeOptions, suffix: SessionInput | None = None
    ) -> AsyncIterator[DecodeStep]:
        async with self._admission.operation(handle) as session:
            if not session.tape and suffix is None:
                raise InvalidArgument("nothing to continue: EnsurePrefix or PrefillSuffix first")
            # live before streaming (waiting for room if every live session is busy); busy from
            # here on, it cannot be parked mid-Decode
            await self._admission.waiting_for_room(
                lambda: self._scheduler.call(self._residency.live, session)
            )
            steps = self._generation.steps(session, request, suffix)
            # closed here, not by the garbage collector: the operation ends only once its
            # generator has been closed on the engine thread
            async with contextlib.aclosing(self._scheduler.stream(steps)) as stream:
                async for step in stream:
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

    # -- Snapshot / Restore -------------------------------------------------------------------

    async def snapshot(self, handle: str) -> tuple[str, int, int]:
        """Persist the session; returns (snapshot id, bytes, tape tokens).

        :raises SnapshotFailed: the write failed (nothing is left behind)."""
        async with self._admission.operation(handle) as session:
            state, tape, prefix_len = await self._scheduler.call(self._capture, session)
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
        return self._residency.state_of(session), list(session.tape), session.prefix_len

    async def restore(
        self, spec: ModelSpec, snapshot_id: str, n_ctx: int, owner: str = ""
    ) -> tuple[Session, ResolvedConfig]:
        """A new session from a snapshot.

        :raises SnapshotNotFound / SnapshotMismatch: unknown, corrupt, or of another model or
            runtime.
        :raises InvalidArgument: ``n_ctx`` smaller than the snapshot's tape."""
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
            await self._scheduler.call(self._install, session, snapshot)
        except BaseException:
            session.close()
            self._free(session)
            raise
        return session, resolved

    def _install(self, session: Session, snapshot: Snapshot) -> None:
        self._residency.live(session).load_state(snapshot.state)
        session.tape = list(snapshot.tape)
        session.prefix_len = snapshot.prefix_len
        session.model.index.update(session.id, session.tape)

    # -- tokenizer ------------------------------------------------------------------------------

    async def model_for(self, handle: str, spec: ModelSpec | None) -> EngineModel:
        if handle:
            loaded = self._table.get(handle).model
        else:
            assert spec is not None
            loaded = await self._pool.load(spec)
        return await self._scheduler.call(self._pool.engine_of, loaded)

    async def tokenize(self, model: EngineModel, text: str, add_special: bool) -> list[int]:
        return await self._scheduler.call(model.tokenize, text, add_special)

    async def detokenize(self, model: EngineModel, ids: list[int]) -> str:
        check_ids(ids, model.facts.vocab_size, "ids")
        return await self._scheduler.call(model.detokenize, ids)
