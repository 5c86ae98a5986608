"""The session layer's facade: the RPC verbs, one operation at a time per session.

``SessionManager`` runs on the event loop. It checks handles (``_table``), admits one operation
per session (``_session``'s state machine), and hands the work to the engine thread as
generators (``_prefill``, ``_generation``) over sessions made live by ``_residency``; models are
loaded by ``_models``, snapshots kept by ``_snapshots``. Figures come from ``_stats``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

from modeld._metrics import Metrics
from modeld.backends._base import Backend, EngineState
from modeld.engine._scheduler import EngineScheduler
from modeld.models._capacity import MemoryBudget
from modeld.models._catalog import ModelCatalog
from modeld.models._facts import ModelSpec
from modeld.models._plan import Served, plan_reference
from modeld.sessions._admission import Admission
from modeld.sessions._control import SessionControl
from modeld.sessions._embeddings import Embeddings, EmbedRequest, EmbedResult
from modeld.sessions._generation import Generation
from modeld.sessions._inputs import check_size, to_tokens_rendered
from modeld.sessions._kv_types import resolve_kv_cache_type
from modeld.sessions._loading import DEFAULT_LOAD_TIMEOUT_S
from modeld.sessions._models import LoadedModel, ModelPool
from modeld.sessions._parking import ParkingLot
from modeld.sessions._prefill import Prefill
from modeld.sessions._prefix_index import common_prefix
from modeld.sessions._residency import Residency
from modeld.sessions._session import Session
from modeld.sessions._snapshots import Snapshot, SnapshotStore, runtime_fingerprint
from modeld.sessions._stats import EngineCounters, LoopCounters, Stats
from modeld.sessions._table import SessionTable
from modeld.sessions._tokenizer import Tokenizer
from modeld.sessions._turns import TapedStep, Turns
from modeld.sessions._types import DecodeOptions, ResolvedConfig, SessionInput
from modeldconn._errors import InvalidArgument, SessionNotFound, UnknownClient
from modeldconn._types import Capabilities, Capacity, Plan, PrefixResult, SuffixResult

__all__ = ["CLOSE_WAIT_S", "CachedPrefix", "ResolvedConfig", "SessionManager", "TapedStep"]

log = logging.getLogger("modeld.sessions")
T = TypeVar("T")

#: how long CloseSession waits for a running operation's engine work to stop (a Decode stops
#: within one engine step; this bounds the wait for a long prefill, or a stream nobody reads)
CLOSE_WAIT_S = 2.0


@dataclasses.dataclass(frozen=True)
class CachedPrefix:
    """An open session whose tape shares a prefix with a prompt (:meth:`SessionManager.cached`),
    measured exactly on the engine thread as of the lookup."""

    handle: str
    owner: str
    busy: bool
    common: int  #: leading tokens its tape shares with the prompt
    tape_tokens: int  #: its tape's length (> common: the tape diverges from the prompt there)
    prefix_tokens: int  #: the length of its last EnsurePrefix (the last prompt it was given)


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
        max_loaded_models: int = 0,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    ) -> None:
        self._catalog = catalog
        self._backend = backend
        self._scheduler = scheduler
        self.lot = lot
        self.snapshots = snapshots
        self._metrics = metrics
        self._table = SessionTable(instance_id)
        self._pool = ModelPool(
            backend,
            scheduler,
            budget,
            self._held_by_sessions,
            sessions_of=self._sessions_of,
            park=lot.park,
            max_loaded=max_loaded_models,
            load_timeout_s=load_timeout_s,
            metrics=metrics,
        )
        #: the Embed verb's models and contexts, apart from sessions
        self.embeddings = Embeddings(backend, scheduler, self._pool)
        self._residency = Residency(self._table, self._pool, lot)
        self._engine_counters = EngineCounters()
        self._loop_counters = LoopCounters()
        self._prefill = Prefill(
            self._table,
            self._pool,
            self._residency,
            self._engine_counters,
            contended=scheduler.contended,
        )
        self._generation = Generation(
            self._table,
            self._pool,
            self._residency,
            self._prefill,
            self._engine_counters,
            metrics,
        )
        self._clients: set[str] = set()
        #: Attach id -> the name the client gave (AttachRequest.client_name), for ListSessions
        self._client_names: dict[str, str] = {}
        #: per decoding session: set (from the engine thread) once its Decode's engine work has
        #: ended, so CloseSession can wait for exactly that
        self._decode_done: dict[str, asyncio.Event] = {}
        self._admission = Admission(self._table, scheduler, self._free, self._share)
        self.tokenizer = Tokenizer(self._table, self._pool, scheduler)
        self.turns = Turns(
            admission=self._admission,
            scheduler=scheduler,
            pool=self._pool,
            residency=self._residency,
            prefill=self._prefill,
            generation=self._generation,
            metrics=metrics,
            decode_done=self._decode_done,
        )
        #: ListSessions, ExplainSession, EvictSession, PinSession, ForkSession
        self.control = SessionControl(
            table=self._table,
            admission=self._admission,
            scheduler=scheduler,
            residency=self._residency,
            client_names=self._client_names,
            open_session=self.open,
            close=self._close_now,
        )
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

    def _share(self) -> int | None:
        """Live contexts one client's sessions may keep busy at once: all but one while other
        clients are attached (so a client holding none always finds one), else no limit."""
        if self._loop_counters.clients_attached < 2 or self.lot.max_live < 2:
            return None
        return self.lot.max_live - 1

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

    async def plan(self, ref: tuple[str, str, str, str], n_ctx: int, kv_cache_type: str) -> Plan:
        """The plan for ``ref`` (name, type, digest, path; ``models._plan.plan_reference``),
        loading nothing. Off the loop: resolving may hash a file, and device discovery asks
        the engine libraries.

        :raises RemoteError: as resolution, and invalid_argument for n_ctx / kv_cache_type.
        """
        served = Served(
            self._backend.name,
            self._backend.capabilities,
            # openvino's --device; llama picks its device from its build and the GPUs
            self._backend.device,
            self._backend.check_kv_cache_type,
        )
        return await asyncio.to_thread(
            plan_reference,
            self._catalog,
            ref,
            served,
            self._plan_memory,
            n_ctx=n_ctx,
            kv_cache_type=kv_cache_type,
        )

    def _plan_memory(self, spec: ModelSpec) -> tuple[int, bool]:
        """(bytes free for ``spec``, whether its weights are resident) for a plan."""
        resident = self._pool.weights_in(spec) or any(
            m.digest == spec.facts.digest and m.weights_loaded for m in self.embeddings.status()
        )
        return self._pool.capacity(spec).free_bytes, resident

    async def end_of_generation_ids(self, spec: ModelSpec) -> list[int]:
        return await self.tokenizer.end_of_generation_ids(spec)

    async def preload(self, spec: ModelSpec) -> None:
        if "generate" not in spec.facts.tasks:  # an embedding-only model has no sessions
            await self.embeddings.preload(spec)
            return
        await self._pool.load(spec)

    async def unload_idle_models(self, idle_s: float) -> None:
        def live(loaded: LoadedModel) -> bool:
            table = self._table.snapshot().values()
            return any(s.model is loaded and s.engine is not None for s in table)

        await self._pool.unload_idle(idle_s, live)

    # -- clients ------------------------------------------------------------------------------

    def attach(self, client_id: str, name: str = "") -> None:
        self._clients.add(client_id)
        self._client_names[client_id] = name
        self._loop_counters.clients_attached = len(self._clients)

    def detach(self, client_id: str) -> int:
        """The client is gone: close every session it opened; returns how many."""
        self._clients.discard(client_id)
        self._client_names.pop(client_id, None)
        self._loop_counters.clients_attached = len(self._clients)
        gone = [s for s in self._table if s.owner == client_id]
        for session in gone:
            self._close(session)
        self._loop_counters.sessions_reaped += len(gone)
        return len(gone)

    async def reap(self, *, park_after_s: float, close_after_s: float) -> None:
        """Park sessions idle longer than ``park_after_s``; close those idle past
        ``close_after_s`` (0 disables either). A pinned session (PinSession) is neither."""
        now = time.monotonic()
        for session in self._table:
            idle_for = now - session.last_used
            if session.busy or session.pinned_until > now:
                continue
            if close_after_s and idle_for > close_after_s:
                log.info("closing session %s, idle for %.0f s", session.id, idle_for)
                self._close(session)
                self._loop_counters.sessions_reaped += 1
            elif park_after_s and idle_for > park_after_s and session.engine is not None:
                await self._scheduler.call(self._residency.park_if_idle, session)

    # -- open / close -------------------------------------------------------------------------

    def _check_owner(self, owner: str) -> None:
        """:raises UnknownClient: ``owner`` is not the id of a live Attach stream. Binding a
        session to an id nobody holds would give it no lifeline: it would idle for a day."""
        if owner and owner not in self._clients:
            raise UnknownClient(
                f"client id {owner!r} was not issued by a live Attach stream of this instance",
                client_id=owner,
            )

    async def open(
        self, spec: ModelSpec, requested_n_ctx: int, owner: str = "", kv_cache_type: str = ""
    ) -> tuple[Session, ResolvedConfig]:
        """``kv_cache_type``: "" = the alias's, else f16 (``_kv_types``).

        :raises InvalidArgument: ``n_ctx`` over the model's trained context; an unknown
            ``kv_cache_type``.
        :raises UnsupportedFeature: the backend, or the model on it, cannot cache KV so.
        :raises InsufficientMemory: the KV (and weights, if not in) do not fit, with the sums.
        :raises ModelLoadFailed: the engine could not load the model.
        :raises UnknownClient: ``owner`` names no live Attach stream (before or after opening)."""
        self._check_owner(owner)
        kv_type = resolve_kv_cache_type(kv_cache_type, spec, self._backend)
        n_ctx, capacity = self._pool.admit(spec, requested_n_ctx, kv_type)
        loaded = await self._pool.load(spec)
        engine = await self._admission.waiting_for_room(
            lambda: self._scheduler.call(self._residency.open_context, loaded, n_ctx, kv_type)
        )
        engine_model = loaded.engine
        assert engine_model is not None  # open_context loaded it
        session_id = uuid.uuid4().hex
        session = Session(session_id, self._table.handle_for(session_id), loaded, engine, n_ctx)
        session.owner = owner
        session.kv_cache_type = kv_type
        self._table.add(session)
        loaded.sessions += 1
        if owner and owner not in self._clients:
            # its client went away while the model loaded: nobody would ever close it
            self._close(session)
            self._check_owner(owner)
        log.info("opened session %s on %s, n_ctx %d", session_id, spec.facts.name, n_ctx)
        resolved = ResolvedConfig(
            n_ctx=n_ctx,
            requested_n_ctx=requested_n_ctx,
            model_max_context=capacity.model_max_context,
            memory_fit_context=capacity.memory_fit_context,
            n_threads=engine_model.n_threads,
            n_batch=engine_model.n_batch,
            kv_cache_type=kv_type,
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
        else:
            await self._until_stopped(session)
        return True

    async def _until_stopped(self, session: Session) -> None:
        """Wait (up to CLOSE_WAIT_S) until the operation running on ``session`` has stopped
        its engine work: a Decode sees CLOSING at its next step and ends with ``cancelled``."""
        waits = [asyncio.ensure_future(session.idle.wait())]
        done = self._decode_done.get(session.id)
        if done is not None:
            waits.append(asyncio.ensure_future(done.wait()))
        _, pending = await asyncio.wait(
            waits, timeout=CLOSE_WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
        for waiting in pending:
            waiting.cancel()

    def _close(self, session: Session) -> bool:
        """Loop: close now, or when its running operation ends; True if freed now."""
        if not session.close():
            return False  # its operation frees it when it ends
        self._free(session)
        return True

    def _close_now(self, session: Session) -> None:
        """Close a session nobody has used yet (a fork that failed)."""
        session.close()
        self._free(session)

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

    # -- EnsurePrefix / PrefillSuffix / Decode (see ``_turns``) ------------------------------

    async def ensure_prefix(
        self, handle: str, value: SessionInput, held: int | None = None
    ) -> PrefixResult:
        return await self.turns.ensure_prefix(handle, value, held)

    async def prefill_suffix(
        self, handle: str, value: SessionInput, held: int | None = None
    ) -> SuffixResult:
        return await self.turns.prefill_suffix(handle, value, held)

    def decode(
        self,
        handle: str,
        request: DecodeOptions,
        suffix: SessionInput | None = None,
        held: int | None = None,
    ) -> AsyncIterator[TapedStep]:
        return self.turns.decode(handle, request, suffix, held)

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
                fingerprint=runtime_fingerprint(self._backend.fingerprint, session.kv_cache_type),
                tape=tape,
                prefix_len=prefix_len,
                n_ctx=session.n_ctx,
            )
            size = await asyncio.to_thread(self.snapshots.save, snapshot)
            return snapshot.id, size, len(tape)

    def _capture(self, session: Session) -> tuple[EngineState, list[int], int]:
        return self._residency.state_of(session), list(session.tape), session.prefix_len

    async def restore(
        self,
        spec: ModelSpec,
        snapshot_id: str,
        n_ctx: int,
        owner: str = "",
        kv_cache_type: str = "",
    ) -> tuple[Session, ResolvedConfig]:
        """A new session from a snapshot. ``kv_cache_type`` "" is the snapshot's own; another
        than the snapshot's is refused.

        :raises SnapshotNotFound / SnapshotMismatch: unknown, corrupt, or of another model,
            runtime or KV cache type.
        :raises InvalidArgument: ``n_ctx`` smaller than the snapshot's tape.
        :raises UnknownClient: ``owner`` names no live Attach stream."""
        self._check_owner(owner)
        if not kv_cache_type:
            kv_cache_type = await asyncio.to_thread(
                self.snapshots.recorded_kv_cache_type, snapshot_id
            )
        snapshot = await asyncio.to_thread(
            self.snapshots.load,
            snapshot_id,
            model_digest=spec.facts.digest,
            fingerprint=runtime_fingerprint(self._backend.fingerprint, kv_cache_type or "f16"),
        )
        wanted = n_ctx or snapshot.n_ctx
        if wanted < len(snapshot.tape):
            raise InvalidArgument(
                f"n_ctx {wanted} is smaller than the snapshot's {len(snapshot.tape)} tokens",
                field="n_ctx",
            )
        session, resolved = await self.open(spec, wanted, owner, kv_cache_type)
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
        session.reuse.record("restore", reused=snapshot.state.kv_len)

    # -- prompts and the prefix index, for front ends that bind requests to sessions ---------

    async def load_model(self, spec: ModelSpec, timeout_s: float = 0.0) -> LoadedModel:
        """``spec``'s entry with its weights in (loading them once, however many ask, within
        ``timeout_s`` when > 0, else the alias's or the daemon's load timeout).

        :raises ModelLoadFailed: the engine could not load it.
        :raises ModelLoadTimeout / Overloaded / InsufficientMemory: see ``ModelPool.load``."""
        return await self._pool.load(spec, timeout_s)

    async def unload_model(self, spec: ModelSpec, park: bool) -> tuple[bool, int, int]:
        """Free ``spec``'s weights, parking its live sessions when ``park`` (else refusing
        while there are any): (unloaded, sessions parked, generation); see
        ``ModelPool.unload``."""
        return await self._pool.unload(spec, park)

    def _sessions_of(self, model: LoadedModel) -> list[Session]:
        """The open sessions of ``model`` (any thread: reads the table's snapshot)."""
        return [s for s in self._table.snapshot().values() if s.model is model]

    async def render(self, model: LoadedModel, value: SessionInput) -> tuple[list[int], str]:
        """``value`` as the tokens it would put at the start of a tape (BOS included), and its
        rendering (see ``to_tokens_rendered``), computed on a worker thread.

        :raises ContextOverflow: far over the model's trained context, before tokenizing.
        :raises InvalidArgument / UnsupportedFeature: see ``to_tokens``."""
        limit = model.spec.facts.context_length
        check_size(value, limit, "ensure_prefix", 0, limit)
        async with self._pool.borrowed(model) as engine:
            return await asyncio.to_thread(to_tokens_rendered, engine, value, start=True)

    async def cached(
        self, model: LoadedModel, tokens: list[int], limit: int = 8
    ) -> list[CachedPrefix]:
        """Open sessions of ``model`` holding the longest indexed prefix of ``tokens`` (the
        prefix index: O(prompt), whatever the number of sessions), each measured exactly
        against its tape, longest common prefix first; [] when none holds a whole block."""

        def lookup() -> list[CachedPrefix]:
            _, holders = model.index.longest(tokens, None, limit)
            table = self._table.snapshot()
            found = []
            for holder in holders:
                session = table.get(holder)
                if session is None or session.model is not model:
                    continue
                found.append(
                    CachedPrefix(
                        handle=session.handle,
                        owner=session.owner,
                        busy=session.busy,
                        common=common_prefix(session.tape, tokens),
                        tape_tokens=len(session.tape),
                        prefix_tokens=session.prefix_len,
                    )
                )
            found.sort(key=lambda c: -c.common)
            return found

        # the index and the tapes are the engine thread's
        return await self._scheduler.call(lookup)

    # -- embeddings -----------------------------------------------------------------------------

    async def embed(self, spec: ModelSpec, request: EmbedRequest) -> EmbedResult:
        """One vector per input; see ``Embeddings.embed`` for the errors."""
        return await self.embeddings.embed(spec, request)

    # -- tokenizer (see ``_tokenizer``) -------------------------------------------------------

    async def model_for(self, handle: str, spec: ModelSpec | None) -> LoadedModel:
        return await self.tokenizer.model_for(handle, spec)

    async def tokenize(self, model: LoadedModel, text: str, add_special: bool) -> list[int]:
        return await self.tokenizer.tokenize(model, text, add_special)

    async def detokenize(self, model: LoadedModel, ids: list[int]) -> str:
        return await self.tokenizer.detokenize(model, ids)
