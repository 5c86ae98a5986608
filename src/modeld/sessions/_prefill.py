"""EnsurePrefix and PrefillSuffix on the engine thread: reuse arithmetic, prefix sharing, and
prefill in turns.

Each operation is a generator the scheduler steps: it yields None between prefill batches (so
other sessions' work goes in between) and its result last. Inputs arrive tokenized: the session
layer tokenizes on another thread, so a long text never holds the engine. Every fallible step
(validation, the context check) comes before the KV is touched, so a refused request leaves the
session exactly as it was, with one deliberate exception: the tape length a client says it
holds (``hold``) is applied first of all, since it removes only tokens that client never
received (those a cancelled Decode generated before it noticed the cancel).

Every prompt is computed in chunks aligned to absolute positions: chunk k covers tokens
[k*C, (k+1)*C) (C = ``PREFIX_CHUNK``), and one engine call never crosses a chunk boundary. That
bounds what a bystander waits for (one chunk, whatever the prompt's length: the scheduler takes
its turn between chunks), and it is what makes ``exact_prefix`` possible: llama.cpp's CPU kernels
(and OpenVINO's in bf16) give other bits for the same tokens split into other batches, so a warm
turn equals a cold run only if both compute every chunk in the same single call. With
``exact_prefix`` a session therefore keeps only whole chunks of what it shares with the new
prompt (``exact_keep``) and recomputes the partial one together with the new tokens; generated
tokens (computed a row at a time) are never kept as such: the next turn recomputes them as
aligned chunks. With ``exact_prefix``, chunk sizes depend on positions only, never on time or
load. Without it, while another client is using the engine (``EngineScheduler.contended``), a
chunk is computed in calls sized by time: as many tokens as the last call's speed says fit in
``CONTENDED_SLICE_S`` (``CONTENDED_CALL`` before there is a speed to go by), so what that client
waits for is about one slice whatever the context's depth: fairness over the long prompt's
throughput, and only while shared.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Generator

from modeld.backends._base import EngineSession
from modeld.sessions._models import ModelPool
from modeld.sessions._prefix_index import BLOCK, common_prefix
from modeld.sessions._residency import Residency
from modeld.sessions._session import Session
from modeld.sessions._stats import EngineCounters
from modeld.sessions._table import SessionTable
from modeldconn._errors import ContextOverflow, InvalidArgument
from modeldconn._types import PrefixResult, SuffixResult

__all__ = [
    "CONTENDED_CALL",
    "MIN_SHARED_TOKENS",
    "PREFIX_CHUNK",
    "Prefill",
    "chunk_floor",
    "exact_keep",
    "held_length",
    "prefix_hash",
]

#: C, the aligned prefill chunk (tokens). Measured on gemma3-270m Q4_K_M, 2 threads
#: (bench/exact_prefix_bench.py --chunks): see the README's "Warm equals cold"
PREFIX_CHUNK = 128

#: engine seconds one prefill call may take while another client shares the engine (sessions
#: without exact_prefix): a bystander's turn is two jobs, each waiting for one call
#: (bench/fairness_bench.py; at 8k tokens of context a 128-token chunk takes ~0.44 s on 2 cores)
CONTENDED_SLICE_S = 0.1
#: tokens of the first such call, before a speed is known; and the fewest of any
CONTENDED_CALL = 32
MIN_CONTENDED_CALL = 8

#: a prefix held by another session is copied (a few ms) rather than computed (~1.4 ms a token on
#: 2 cores) once it beats the session's own resident prefix by this many tokens
MIN_SHARED_TOKENS = 16
#: holders of the longest indexed prefix whose tapes are compared exactly; they agree on every
#: indexed block, so the first few are as good as any (and the cost stays O(prompt))
_CANDIDATES = 4


def held_length(tape: list[int], claimed: int | None) -> int:
    """The tape's length once cut to the ``claimed`` tokens a client holds (None: as it is).

    :raises InvalidArgument: a claim longer than the tape."""
    if claimed is None:
        return len(tape)
    if claimed > len(tape):
        raise InvalidArgument(
            f"the client claims {claimed} tokens; the tape holds {len(tape)}",
            field="tape_tokens",
            tape_tokens=len(tape),
            claimed=claimed,
        )
    return claimed


def prefix_hash(tokens: list[int]) -> str:
    """sha256 of the tokens as little-endian int32s, hex."""
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()


def chunk_floor(tokens: int) -> int:
    """The last chunk boundary at or before ``tokens``."""
    return tokens - tokens % PREFIX_CHUNK


def exact_keep(aligned: int, common: int, target: int) -> int:
    """How many tokens of a KV to keep so that computing the rest of a ``target``-token prompt
    in aligned chunks gives exactly a cold run's KV: ``aligned`` of its tokens are exact (see
    ``Session.aligned``) and ``common`` of them are the prompt's own.

    Whole chunks are kept; the partial chunk only when it is the prompt's own last chunk,
    computed at exactly that length (the prompt ends where the exact KV ends)."""
    if common >= target and aligned == target:
        return target
    return chunk_floor(min(aligned, common, target))


class Prefill:
    def __init__(
        self,
        table: SessionTable,
        pool: ModelPool,
        residency: Residency,
        counters: EngineCounters,
        contended: Callable[[], bool] = lambda: False,
        slice_s: float = CONTENDED_SLICE_S,
    ) -> None:
        """``contended``: engine thread, whether another client shares the engine now;
        ``slice_s``: what one prefill call may take then."""
        self._table = table
        self._pool = pool
        self._residency = residency
        self._counters = counters
        self._contended = contended
        self._slice_s = slice_s

    def hold(self, session: Session, tape_tokens: int | None) -> None:
        """Engine thread: cut the tape back to the ``tape_tokens`` the client holds (None: keep
        it). Cheap: a KV truncation, no computation; the logits of the kept end are recomputed
        by whatever needs them next.

        :raises InvalidArgument: a claim longer than the tape (nothing is changed)."""
        if held_length(session.tape, tape_tokens) == len(session.tape):
            return
        assert tape_tokens is not None
        engine = self._residency.live(session)
        if engine.kv_len > tape_tokens:
            self.truncate(session, engine, tape_tokens)
        session.tape = session.tape[:tape_tokens]
        session.prefix_len = min(session.prefix_len, tape_tokens)
        session.turn_reused = min(session.turn_reused, tape_tokens)
        session.model.index.update(session.id, session.tape)

    @staticmethod
    def truncate(session: Session, engine: EngineSession, keep: int) -> None:
        """Cut the KV to ``keep`` tokens; a chunk cut short is no longer exact."""
        engine.truncate(keep)
        if keep < session.aligned:
            session.aligned = chunk_floor(keep)

    def exact_start(
        self, session: Session, full: list[int], common: int, *, logits: bool = False
    ) -> int:
        """With ``exact_prefix``: cut the KV (sharing ``common`` tokens with ``full``) back to
        what a cold run of ``full`` would compute identically, and return its length.
        ``logits``: the caller samples next, and the logits of ``full``'s last token must come
        out of its chunk, never out of a lone recomputation: if they are not current, that
        chunk is recomputed."""
        engine = self._residency.live(session)
        keep = exact_keep(session.aligned, min(common, engine.kv_len), len(full))
        if logits and keep == len(full) and full and not engine.logits_current():
            keep = chunk_floor(len(full) - 1)
        if keep < engine.kv_len:
            self.truncate(session, engine, keep)
        session.tape = session.tape[:keep]
        return keep

    def in_turns(self, session: Session, full: list[int]) -> Generator[None, None, None]:
        """Compute ``full[kv_len:]`` a chunk at a time, each engine call ending at the next
        multiple of ``PREFIX_CHUNK`` (or the prompt's end), the tape always matching the KV;
        in calls sized by time while the engine is shared (not with ``exact_prefix``: see the
        module)."""
        engine = self._residency.live(session)
        rate = 0.0  # tokens a second of the last call: the context's depth sets it
        try:
            while engine.kv_len < len(full):
                start = engine.kv_len
                end = chunk_floor(start) + PREFIX_CHUNK
                if not session.exact_prefix and self._contended():
                    end = min(end, start + self._contended_call(rate))
                began = time.perf_counter()
                engine.prefill(full[start:end])
                rate = (engine.kv_len - start) / max(time.perf_counter() - began, 1e-6)
                session.tape = full[: engine.kv_len]
                if start == session.aligned and start % PREFIX_CHUNK == 0:
                    session.aligned = engine.kv_len  # a whole chunk, or the prompt's last one
                else:  # a chunk computed in two calls: exact only up to its start
                    session.aligned = min(session.aligned, chunk_floor(start))
                if engine.kv_len < len(full):
                    yield None
            session.tape = list(full)
        finally:
            session.model.index.update(session.id, session.tape)

    def _contended_call(self, rate: float) -> int:
        """Tokens for one call that should take ``slice_s`` at ``rate`` tokens a second."""
        if rate <= 0:
            return CONTENDED_CALL
        return max(MIN_CONTENDED_CALL, min(PREFIX_CHUNK, int(rate * self._slice_s)))

    def ensure_prefix(
        self, session: Session, tokens: list[int], held: int | None = None
    ) -> Generator[PrefixResult | None, None, None]:
        """``tokens``: the prefix, tokenized already (off the engine thread)."""
        self.hold(session, held)
        engine = self._residency.live(session)
        if len(tokens) > session.n_ctx:
            raise ContextOverflow(
                f"a prefix of {len(tokens)} tokens does not fit n_ctx {session.n_ctx}",
                stage="ensure_prefix",
                resident=engine.kv_len,
                additional=len(tokens),
                n_ctx=session.n_ctx,
            )
        matching = common_prefix(session.tape, tokens)
        # only tokens whose KV is resident can be reused; a matching token sampled by the last
        # Decode but not computed yet is kept, not dropped, and computed now
        common = min(matching, engine.kv_len)
        if session.exact_prefix:
            common = exact_keep(session.aligned, common, len(tokens))
        dropped = len(session.tape) - matching
        shared = self._share_from_donor(session, engine, tokens, common)
        if shared:
            common = shared
        elif shared is None:  # the copy failed: the session's own KV is gone, compute it all
            common = 0
        if common:
            self._counters.prefix_hits += 1
        else:
            self._counters.prefix_misses += 1
        if session.exact_prefix:
            common = self.exact_start(session, tokens, common)
        else:
            self.truncate(session, engine, common)
            session.tape = session.tape[:common]
        yield from self.in_turns(session, tokens)
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
            shared=shared or 0,
        )

    def _share_from_donor(
        self, session: Session, engine: EngineSession, tokens: list[int], own: int
    ) -> int | None:
        """Start ``session`` from the KV of the session holding the longest prefix of
        ``tokens``, when that beats its own by enough to pay for the copy.

        :returns: tokens copied; 0 when no donor was worth it (the session's KV is untouched);
            None when the engine could not copy (the session's KV is then empty).
        """
        table = self._table.snapshot()

        def same_kv_type(holder: str) -> bool:  # KV of another type cannot be copied in
            other = table.get(holder)
            return other is not None and other.kv_cache_type == session.kv_cache_type

        covered, holders = session.model.index.longest(
            tokens, session.id, _CANDIDATES, same_kv_type
        )
        best = own + MIN_SHARED_TOKENS - 1
        if covered + BLOCK - 1 <= best:  # no indexed donor can beat it, even by a partial block
            return 0
        donor: Session | None = None
        for holder in holders:
            other = table.get(holder)
            if other is None or other.model is not session.model:
                continue
            have = min(common_prefix(other.tape, tokens), self._residency.resident_len(other))
            if session.exact_prefix:  # only what the donor computed as a cold run would
                have = exact_keep(other.aligned, have, len(tokens))
            if have > best:
                best, donor = have, other
        if donor is None:
            return 0
        source = donor.engine if donor.engine is not None else self._residency.state_of(donor)
        if not engine.adopt_prefix(source, best):
            self._counters.prefix_share_failures += 1
            session.tape = []
            session.aligned = 0
            return None
        session.tape = donor.tape[:best]
        session.aligned = exact_keep(donor.aligned, best, best)  # the donor's bits, as they were
        self._counters.prefix_shares += 1
        self._counters.prefix_shared_tokens += best
        return best

    def prefill_suffix(
        self, session: Session, tokens: list[int], held: int | None = None
    ) -> Generator[SuffixResult | None, None, None]:
        """``tokens``: the suffix, tokenized already (BOS included where it starts the tape)."""
        self.hold(session, held)
        engine = self._residency.live(session)
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
        full = session.tape + tokens
        if session.exact_prefix:
            # the partial chunk and decoded rows are recomputed with the suffix, as a cold run
            kept = self.exact_start(session, full, len(session.tape))
            pending = full[kept : len(full) - len(tokens)]
        yield from self.in_turns(session, full)
        yield SuffixResult(
            suffix_tokens=len(tokens),
            prefilled=len(pending) + len(tokens),
            resident=engine.kv_len,
            available=session.n_ctx - engine.kv_len,
        )
