"""Where a session's KV lives: making it live (restoring it if parked, parking others to make
room), opening contexts, and freeing them. Engine thread only.
"""

from __future__ import annotations

import time

from modeld.backends._base import EngineSession, EngineState
from modeld.sessions._models import LoadedModel, ModelPool
from modeld.sessions._parking import ParkingLot
from modeld.sessions._session import Session
from modeld.sessions._table import SessionTable

__all__ = ["Residency"]


class Residency:
    def __init__(self, table: SessionTable, pool: ModelPool, lot: ParkingLot) -> None:
        self._table = table
        self._pool = pool
        self.lot = lot

    def open_context(
        self, loaded: LoadedModel, n_ctx: int, kv_cache_type: str = "f16"
    ) -> EngineSession:
        """A new engine context (its KV cached as ``kv_cache_type``), parking an idle session
        first if every slot is taken.

        :raises NoRoom: every live session is busy.
        """
        self.lot.make_room(self._table.snapshot().values(), keep=None)
        required = n_ctx * loaded.spec.facts.kv_bytes_per_token_at(kv_cache_type)
        self._pool.make_kv_room(required, (loaded, n_ctx, kv_cache_type))
        return self._pool.engine_of(loaded).open_session(n_ctx, kv_cache_type)

    def live(self, session: Session) -> EngineSession:
        """The session's engine context, restored first if it was parked.

        :raises NoRoom: it is parked and every live session is busy.
        :raises SessionFatal: its parked state is lost.
        """
        session.last_used = time.monotonic()
        if session.engine is None:
            self.lot.make_room(self._table.snapshot().values(), keep=session)
            if session.parked is None:  # dropped (EvictSession): an empty KV; the tape stays
                session.engine = self._reopen(session)
                session.aligned = 0
            else:
                session.reuse.note_restore("ram" if session.parked.state is not None else "disk")
                self.lot.restore(session, lambda: self._reopen(session))
        assert session.engine is not None
        return session.engine

    def _reopen(self, session: Session) -> EngineSession:
        """A new context for ``session``: its size, its KV cache type (a parked state loads
        only into a context of the type it was saved from)."""
        n_ctx, kv_type = session.n_ctx, session.kv_cache_type
        required = n_ctx * session.model.spec.facts.kv_bytes_per_token_at(kv_type)
        self._pool.make_kv_room(required, (session.model, n_ctx, kv_type))
        return self._pool.engine_of(session.model).open_session(
            session.n_ctx, session.kv_cache_type
        )

    def state_of(self, session: Session) -> EngineState:
        """Its KV (and logits) as a saved state, wherever it lives."""
        if session.engine is None and session.parked is None:  # dropped: an empty KV
            return self.live(session).save_state()
        return session.engine.save_state() if session.engine else self.lot.saved_state(session)

    def resident_len(self, session: Session) -> int:
        """Tokens of its tape whose KV it holds, live or parked."""
        if session.engine is not None:
            return session.engine.kv_len
        return session.parked.kv_len if session.parked is not None else 0

    def park_if_idle(self, session: Session) -> None:
        if session.engine is not None and not session.busy and session.id in self._table.snapshot():
            self.lot.park(session)

    def drop(self, session: Session) -> None:
        """Free its KV, live or parked, keeping its tape: its next turn recomputes the tape
        (as a cold run would, so warm equals cold still holds)."""
        if session.engine is not None:
            session.engine.close()
            session.engine = None
        self.lot.forget(session)
        session.aligned = 0

    def release(self, session: Session) -> None:
        """Free its context or parked state, and forget its prefixes (it is closed)."""
        if session.engine is not None:
            session.engine.close()
            session.engine = None
        self.lot.forget(session)
        session.model.index.remove(session.id)
