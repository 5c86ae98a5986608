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
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, Protocol

import llama_cpp as ll
import numpy as np

from modeld.backends import _exactness
from modeldconn._errors import SessionFatal

__all__ = ["GGML_KV_TYPES", "Lane", "LogitsHolder", "exact_decode_rows"]


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
