"""llama.cpp contexts shared by sessions: one sequence each, batched decode where it is exact.

A *lane* is one llama_context whose sequences are sessions of one model, context size and KV
cache type (f16, q8_0, q4_0: one type per llama_context). Its
KV cache is split per sequence (``kv_unified`` off): each session has its own stream of
``n_ctx`` cells, so its attention never sees, and its numbers never depend on, another
session's cells. Sessions in one lane can compute their decode steps in one ``llama_decode``.

Batching is used only as far as it is *exact*: llama.cpp's CPU kernels may switch to other code
paths for larger batches (on this project's machine, logits are bit-identical up to 7 rows and
differ from 8). :func:`exact_decode_rows` measures, once per model load, up to how many rows a
batched decode step gives every row the same bits as decoding it alone; lanes hold that many
sessions, so "each session gets exactly its solo result" holds batched or not.

Logits live in the context until its next decode; a lane copies out the rows of sessions that
have not sampled yet before it decodes again, so nobody's logits are lost to a neighbour.

A lane whose last session leaves is not freed at once: a :class:`LanePool` keeps a few empty
lanes for the next session of the same context size and KV type (creating a 4-sequence context
took 80 / 290 / 630 ms at n_ctx 2k / 8k / 16k on Gemma 270M here, quiet; reusing one takes
~0.1 ms). A pooled lane is reset to exactly a fresh context's state (:meth:`Lane.reset`).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import llama_cpp as ll
import numpy as np

from modeld.backends import _exactness
from modeldconn._errors import SessionFatal

__all__ = [
    "GGML_KV_TYPES",
    "IDLE_LANES",
    "IDLE_LANE_S",
    "Lane",
    "LanePool",
    "LogitsHolder",
    "exact_decode_rows",
]


class LogitsHolder(Protocol):
    def keep_logits(self, row: np.ndarray) -> None:
        """Take a copy of the logits the lane is about to overwrite."""


#: llama.cpp's element type of each KV cache type (K and V alike)
GGML_KV_TYPES = {"f16": ll.GGML_TYPE_F16, "q8_0": ll.GGML_TYPE_Q8_0, "q4_0": ll.GGML_TYPE_Q4_0}


def _context(
    model: Any, n_ctx: int, seqs: int, n_batch: int, n_threads: int, kv_cache_type: str
) -> Any:
    params = ll.llama_context_default_params()
    if kv_cache_type != "f16":
        params.type_k = params.type_v = GGML_KV_TYPES[kv_cache_type]
        # llama.cpp keeps a quantized V cache only under flash attention (without it, context
        # creation fails); f16 keeps llama.cpp's own choice, as before KV types existed
        params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
    params.n_ctx = n_ctx * seqs
    params.n_seq_max = seqs
    params.kv_unified = False  # a KV stream per sequence: sessions never share cells
    params.n_batch = params.n_ubatch = min(n_batch, n_ctx)
    params.n_threads = params.n_threads_batch = n_threads
    # Full-size sliding-window KV, so the tape can be truncated at any token.
    params.swa_full = True
    params.no_perf = True
    return ll.llama_init_from_model(model, params)


class Lane:
    """One context, ``seqs`` sequence slots of ``n_ctx`` cells each, its K and V cached as
    ``kv_cache_type`` (GGML_KV_TYPES)."""

    def __init__(
        self,
        model: Any,
        vocab_size: int,
        n_ctx: int,
        seqs: int,
        n_batch: int,
        n_threads: int,
        kv_cache_type: str = "f16",
    ) -> None:
        self.n_ctx = n_ctx
        self.kv_cache_type = kv_cache_type
        self.vocab_size = vocab_size
        self.ctx = _context(model, n_ctx, seqs, n_batch, n_threads, kv_cache_type)
        if not self.ctx:
            raise SessionFatal(
                f"llama.cpp could not create a context of {seqs} x {n_ctx} tokens "
                f"with a {kv_cache_type} KV cache"
            )
        self.memory = ll.llama_get_memory(self.ctx)
        self.batch_size = min(n_batch, n_ctx)
        self._batch = ll.llama_batch_init(max(self.batch_size, seqs), 0, 1)
        self._free = list(range(seqs - 1, -1, -1))
        self.seqs = seqs
        #: sessions whose current logits are a row of this context's output
        self._rows: dict[int, tuple[LogitsHolder, int]] = {}

    @property
    def empty(self) -> bool:
        return len(self._free) == self.seqs

    @property
    def has_room(self) -> bool:
        return bool(self._free)

    def take(self) -> int:
        return self._free.pop()

    def reset(self) -> None:
        """Back to a fresh context's state, for reuse by other sessions (the lane is empty):
        every sequence's cells gone and the cell heads at 0 (new cells land where a fresh
        context puts them, so attention sums in the same order), no logits row owned, and
        sequences handed out in a fresh lane's order. The K/V bytes are not zeroed: an empty
        cell is masked out of attention (its weight is exactly 0)."""
        assert self.empty, "only an empty lane is reset"
        ll.llama_memory_clear(self.memory, False)
        self._rows.clear()
        self._free = list(range(self.seqs - 1, -1, -1))

    def give_back(self, seq: int) -> None:
        ll.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self._free.append(seq)

    def logits_row(self, holder: LogitsHolder) -> int | None:
        held = self._rows.get(id(holder))
        return None if held is None else held[1]

    def row_pointer(self, row: int) -> Any:
        return ll.llama_get_logits_ith(self.ctx, row)

    def forget(self, holder: LogitsHolder) -> None:
        self._rows.pop(id(holder), None)

    def decode(
        self, tokens: Sequence[tuple[int, int, int, bool]], owners: Sequence[LogitsHolder]
    ) -> int:
        """``llama_decode`` of ``(token, pos, seq, wants_logits)`` rows; ``owners[i]`` owns the
        i-th row that wants logits. Returns llama.cpp's status (0: done)."""
        mine = {id(owner) for owner in owners}
        for key, (holder, row) in list(self._rows.items()):
            if key not in mine:  # about to be overwritten: keep a copy for its sampler
                pointer = self.row_pointer(row)
                holder.keep_logits(np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy())
            del self._rows[key]
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, (token, pos, seq, logits) in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        status = int(ll.llama_decode(self.ctx, batch))
        if status == 0:
            rows = [i for i, (_, _, _, logits) in enumerate(tokens) if logits]
            for owner, row in zip(owners, rows, strict=True):
                self._rows[id(owner)] = (owner, row)
        return status

    def state_size(self, seq: int) -> int:
        return int(ll.llama_state_seq_get_size(self.ctx, seq))

    def save(self, seq: int) -> bytes:
        size = self.state_size(seq)
        buffer = (ctypes.c_uint8 * size)()
        written = ll.llama_state_seq_get_data(self.ctx, buffer, size, seq)
        return ctypes.string_at(buffer, written)

    def load(self, seq: int, data: bytes) -> bool:
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return bool(ll.llama_state_seq_set_data(self.ctx, buffer, len(data), seq))

    def close(self) -> None:
        if self.ctx:
            ll.llama_batch_free(self._batch)
            ll.llama_free(self.ctx)
            self.ctx = None


#: empty lanes a model keeps for reuse, at most (the oldest is freed first)
IDLE_LANES = 2
#: seconds an empty lane stays pooled without being reused (checked at each lane event)
IDLE_LANE_S = 300.0


class LanePool:
    """Empty lanes kept for reuse, keyed like a model's lanes by (n_ctx, KV cache type).

    Bounded three ways: at most ``max_idle`` lanes (the least recently pooled is freed first),
    none pooled longer than ``idle_s`` (checked whenever a lane is pooled or taken), and
    :meth:`drop` frees them all when memory is needed (the daemon counts :attr:`bytes` as KV
    in use and treats it as reclaimable). Engine thread, except :attr:`bytes` (any thread:
    one int, replaced whole).

    :param lane_bytes: KV bytes a lane holds (its sequences x n_ctx x bytes a token).
    :param max_idle: lanes kept at most (0: none, every empty lane is freed; default
        :data:`IDLE_LANES`); ``idle_s``: seconds one is kept unused (default :data:`IDLE_LANE_S`).
    """

    def __init__(
        self,
        lane_bytes: Callable[[Lane], int],
        max_idle: int | None = None,
        idle_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lane_bytes = lane_bytes
        # the module's figures when not given, read now (a benchmark sets IDLE_LANES = 0 to
        # measure the daemon without the pool)
        self.max_idle = IDLE_LANES if max_idle is None else max_idle
        self.idle_s = IDLE_LANE_S if idle_s is None else idle_s
        self._clock = clock
        #: (lane, when pooled), oldest first
        self._idle: list[tuple[Lane, float]] = []
        #: KV bytes the pooled lanes hold
        self.bytes = 0
        #: lanes taken from the pool (reused) and lanes freed by it, since it was made
        self.reused = 0
        self.freed = 0

    def __len__(self) -> int:
        return len(self._idle)

    def take(self, n_ctx: int, kv_cache_type: str) -> Lane | None:
        """An empty pooled lane of this size and type (removed from the pool), else None."""
        self._expire()
        for i, (lane, _) in enumerate(self._idle):
            if lane.n_ctx == n_ctx and lane.kv_cache_type == kv_cache_type:
                del self._idle[i]
                self._recount()
                self.reused += 1
                return lane
        return None

    def put(self, lane: Lane) -> None:
        """Keep ``lane`` (empty) for reuse, reset; frees the oldest beyond ``max_idle``."""
        self._expire()
        if self.max_idle < 1:
            self._free(lane)
            return
        lane.reset()
        self._idle.append((lane, self._clock()))
        while len(self._idle) > self.max_idle:
            self._free(self._idle.pop(0)[0])
        self._recount()

    def drop(self, keep: tuple[int, str] | None = None) -> int:
        """Free every pooled lane but, when ``keep`` names an (n_ctx, KV cache type), one lane
        of it (the session about to open takes it: it needs no new memory); the bytes freed."""
        freed = self.bytes
        kept: list[tuple[Lane, float]] = []
        for lane, at in self._idle:
            if not kept and keep == (lane.n_ctx, lane.kv_cache_type):
                kept.append((lane, at))
            else:
                self._free(lane)
        self._idle = kept
        self._recount()
        return freed - self.bytes

    def _expire(self) -> None:
        now = self._clock()
        kept = [(lane, at) for lane, at in self._idle if now - at < self.idle_s]
        if len(kept) != len(self._idle):
            for lane, at in self._idle:
                if now - at >= self.idle_s:
                    self._free(lane)
            self._idle = kept
            self._recount()

    def _free(self, lane: Lane) -> None:
        lane.close()
        self.freed += 1

    def _recount(self) -> None:
        self.bytes = sum(self._lane_bytes(lane) for lane, _ in self._idle)


class _Probe:
    def __init__(self) -> None:
        self.logits: np.ndarray | None = None

    def keep_logits(self, row: np.ndarray) -> None:
        self.logits = row


def exact_decode_rows(
    model: Any, vocab_size: int, up_to: int, n_threads: int, kv_cache_type: str = "f16"
) -> int:
    """Up to how many sequences one decode step may batch with every row's logits bit-identical
    to the same row decoded alone (1: batching is never exact here), with the KV cached as
    ``kv_cache_type`` (a quantized cache runs other attention kernels). About a dozen small
    decodes, once per model load and KV type (the measurement itself:
    ``modeld.backends._exactness``)."""
    if up_to < 2:
        return 1
    lane = Lane(model, vocab_size, 64, up_to, 64, n_threads, kv_cache_type)
    try:
        probes = [_Probe() for _ in range(up_to)]
        for seq in range(up_to):  # distinct short histories
            history = [(1 + 13 * seq + 7 * i) % vocab_size for i in range(6)]
            lane.decode([(t, i, seq, False) for i, t in enumerate(history)], [])
        step = [((3 + 29 * seq) % vocab_size, 6, seq, True) for seq in range(up_to)]

        def row(i: int) -> np.ndarray:
            return np.ctypeslib.as_array(lane.row_pointer(i), shape=(vocab_size,))

        def alone(seq: int) -> np.ndarray:
            if lane.decode([step[seq]], [probes[seq]]) != 0:
                raise SessionFatal("llama_decode failed while probing batch sizes")
            copy: np.ndarray = row(0).copy()
            return copy

        def together(rows: int) -> list[np.ndarray] | None:
            if lane.decode(step[:rows], probes[:rows]) != 0:
                return None
            return [row(i) for i in range(rows)]

        def undo(seqs: Sequence[int]) -> None:
            for seq in seqs:
                ll.llama_memory_seq_rm(lane.memory, seq, 6, -1)

        return _exactness.exact_decode_rows(up_to, alone, together, undo)
    finally:
        lane.close()
