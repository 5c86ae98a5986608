"""The llama.cpp backend, on llama-cpp-python's low-level (ctypes) API.

Each session is a sequence of a llama_context shared with a few other sessions of the same
model, context size and KV cache type (a *lane*, see ``_lane``): its KV stream is its own, so one
session's work never changes another's numbers, and their decode steps can share one
llama_decode. Sampling runs in llama.cpp's native sampler chain; Python only sees the chosen
token id.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

import llama_cpp as ll
import llguidance
import numpy as np

from modeld.backends._base import (
    Capabilities,
    EngineModel,
    EngineSession,
    EngineState,
    SamplingParams,
    check_generates,
    check_room,
    check_state_fits,
    check_text,
    without_double_bos,
)
from modeld.backends._once import Once
from modeld.backends.llama._embed import LlamaEmbedder
from modeld.backends.llama._grammar_vocab import grammar_tokenizer
from modeld.backends.llama._lane import GGML_KV_TYPES, Lane, LanePool, exact_decode_rows
from modeld.backends.llama._sampler import LlamaSampler
from modeld.backends.llama._seq_state import cut_to_prefix
from modeld.models._facts import ModelFacts, ModelSpec
from modeld.models._plan import llama_gpu_layers
from modeldconn._errors import (
    ModelLoadFailed,
    SessionFatal,
    SnapshotMismatch,
    UnsupportedFeature,
)

__all__ = ["QUANT_BLOCK", "LlamaBackend", "cpu_has_amx", "kv_cache_refusal", "weight_params"]

#: sessions of one model and context size share a llama.cpp context, this many at most (fewer
#: where batching them would not be exact): four rows decode at 2.6x one row's rate here
SEQUENCES_PER_CONTEXT = 4
#: elements per block of ggml's q8_0 and q4_0: a quantized K or V row holds whole blocks
QUANT_BLOCK = 32
_init_lock = threading.Lock()
_initialised = False
#: llama.cpp keeps a raw pointer to the log callback: it must outlive every call.
_silent_log: Any = None


def cpu_has_amx() -> bool:
    """Intel AMX on this CPU (Linux): llama.cpp then places quantized weights in its AMX
    buffers, whose matmul segfaults on Gemma 3 here (llama.cpp issue #20824, open)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return any(line.startswith("flags") and " amx_tile" in line for line in cpuinfo)
    except OSError:
        return False


def weight_params(n_gpu_layers: int = 0) -> Any:
    """The model parameters modeld (and its benchmarks' llama.cpp baselines) load with:
    ``n_gpu_layers`` offloaded (0: CPU only; the plan fits it, ``models._plan``); repacked
    weight buffers ("extra buffer types": AMX, CPU_REPACK) except on AMX CPUs."""
    params = ll.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_extra_bufts = not cpu_has_amx()
    return params


def kv_cache_refusal(facts: ModelFacts, kv_cache_type: str) -> str:
    """Why llama.cpp cannot cache ``facts``'s K and V as ``kv_cache_type`` (one of
    GGML_KV_TYPES); "" when it can. A quantized row is whole ``QUANT_BLOCK``-element blocks, so
    each head's K and V width must be a multiple of it (ggml asserts, and the process aborts,
    on a row that is not)."""
    if kv_cache_type == "f16":
        return ""
    odd = [
        f"{name} {dim}"
        for name, dim in (("key head dim", facts.head_dim), ("value head dim", facts.value_dim))
        if dim % QUANT_BLOCK
    ]
    if odd:
        return (
            f"a {kv_cache_type} KV cache stores blocks of {QUANT_BLOCK} elements, and "
            f"{facts.name}'s {' and '.join(odd)} is not a multiple of {QUANT_BLOCK}: use f16"
        )
    return ""


def _init_llama_once() -> None:
    global _initialised, _silent_log
    with _init_lock:
        if _initialised:
            return
        _silent_log = ll.llama_log_callback(lambda level, text, data: None)
        ll.llama_log_set(_silent_log, None)
        ll.llama_backend_init()
        _initialised = True


class LlamaSession:
    """One sequence of a shared context (a lane): its KV stream, its logits, its length."""

    def __init__(self, model: LlamaModel, lane: Lane, n_ctx: int) -> None:
        self.model = model
        self.lane = lane
        self.kv_cache_type = lane.kv_cache_type
        self.seq = lane.take()
        self.n_ctx = n_ctx
        self.kv_len = 0
        self._logits_for = -1  # kv_len at which this session's logits were produced
        #: a copy of the current logits when the context no longer holds them
        self.saved_logits: np.ndarray | None = None

    @property
    def batch_group(self) -> object:
        """Sessions of one lane decode together."""
        return self.lane

    def keep_logits(self, row: np.ndarray) -> None:
        self.saved_logits = row

    def logits_row(self) -> int | None:
        """The context's output row holding this session's current logits, if it still does."""
        return self.lane.logits_row(self) if self.logits_current() else None

    def _drop_logits(self) -> None:
        self.lane.forget(self)
        self.saved_logits = None
        self._logits_for = -1

    def truncate(self, keep: int) -> None:
        if keep < self.kv_len:
            ll.llama_memory_seq_rm(self.lane.memory, self.seq, keep, -1)
            self.kv_len = keep
            self._drop_logits()

    def prefill(self, tokens: Sequence[int]) -> None:
        check_room(self.kv_len, len(tokens), self.n_ctx)
        start = self.kv_len
        self._drop_logits()
        size = self.lane.batch_size
        for offset in range(0, len(tokens), size):
            chunk = tokens[offset : offset + size]
            last = offset + len(chunk) == len(tokens)
            rows = [
                (token, self.kv_len + i, self.seq, last and i == len(chunk) - 1)
                for i, token in enumerate(chunk)
            ]
            status = self.lane.decode(rows, [self] if last else [])
            if status != 0:
                # leave the KV exactly as it was before this call
                ll.llama_memory_seq_rm(self.lane.memory, self.seq, start, -1)
                self.kv_len = start
                self._drop_logits()
                raise SessionFatal(f"llama_decode failed with status {status}")
            self.kv_len += len(chunk)
        self._logits_for = self.kv_len

    def computed_one(self) -> None:
        """After a batched step computed one token for this session (its row is current)."""
        self.saved_logits = None
        self.kv_len += 1
        self._logits_for = self.kv_len

    def save_state(self) -> EngineState:
        """The resident KV via llama.cpp's per-sequence state functions, plus current logits."""
        logits = None
        row = self.logits_row()
        if row is not None:
            logits = ctypes.string_at(self.lane.row_pointer(row), 4 * self.model.facts.vocab_size)
        elif self.logits_current() and self.saved_logits is not None:
            logits = self.saved_logits.astype(np.float32).tobytes()
        return EngineState(self.lane.save(self.seq), self.kv_len, logits)

    def _clear(self) -> None:
        ll.llama_memory_seq_rm(self.lane.memory, self.seq, -1, -1)
        self.kv_len = 0
        self._drop_logits()

    def load_state(self, state: EngineState) -> None:
        """Replace the resident KV (and logits) with ``state``.

        :raises InvalidArgument: ``state`` holds more tokens than this session's n_ctx.
        :raises SnapshotMismatch: llama.cpp refused it (another model or KV layout).
        Either way the session is left empty (kv_len 0) and usable.
        """
        self._clear()
        check_state_fits(state.kv_len, self.n_ctx)
        if state.kv_len and not self.lane.load(self.seq, state.kv):
            self._clear()  # llama.cpp removes what it had read; make sure of it
            raise SnapshotMismatch(
                f"llama.cpp refused a saved state of {state.kv_len} tokens "
                f"({len(state.kv)} bytes) for a sequence of n_ctx {self.n_ctx}",
                kv_len=state.kv_len,
                n_ctx=self.n_ctx,
            )
        self.kv_len = state.kv_len
        if state.logits is not None:
            self.saved_logits = np.frombuffer(state.logits, dtype=np.float32).copy()
            self._logits_for = self.kv_len

    def adopt_prefix(self, donor: EngineSession | EngineState, keep: int) -> bool:
        """Replace this session's KV with the first ``keep`` tokens of ``donor``'s.

        The donor's per-sequence state is cut to its cells at positions ``0..keep-1`` before
        it is loaded (``_seq_state``), so a donor holding more tokens than this session's n_ctx
        still shares the prefix this session can hold, across lanes of any size. The bits are
        the donor's own: the receiver continues exactly as if it had computed the prefix
        itself. Logits are not current afterwards. Returns False, leaving this session empty
        and usable, when the donor is another model's or caches another KV type, ``keep``
        exceeds what either side has or holds, or llama.cpp refuses the state (a saved state
        of another KV type: llama.cpp checks its rows' types on load).
        """
        if keep < 0:
            raise ValueError(f"keep {keep} < 0")
        if donor is self and keep <= self.kv_len:
            self.truncate(keep)
            self._drop_logits()
            return True
        if (
            isinstance(donor, LlamaSession)
            and donor is not self
            and donor.model is self.model
            and donor.kv_cache_type == self.kv_cache_type
        ):
            blob = donor.lane.save(donor.seq) if 0 < keep <= donor.kv_len else b""
            held = donor.kv_len
        elif isinstance(donor, EngineState):
            blob, held = donor.kv, donor.kv_len
        else:
            blob, held = b"", 0
        self._clear()
        if keep == 0:
            return True
        if keep > held or keep > self.n_ctx:
            return False
        part = blob if keep == held else cut_to_prefix(blob, keep)
        if part is None and held <= self.n_ctx:
            # a sliding-window model's state may not cut at ``keep`` (its SWA section lacks
            # cells the cut wants); the whole state fits, so load it and truncate here
            part = blob
        if part is None or not self.lane.load(self.seq, part):
            self._clear()
            return False
        self.kv_len = held if part is blob and keep != held else keep
        self.truncate(keep)
        return True

    def logits_current(self) -> bool:
        return self._logits_for == self.kv_len and self.kv_len > 0

    def sampler(self, params: SamplingParams, history: Sequence[int]) -> LlamaSampler:
        return LlamaSampler(self, params, history)

    def close(self) -> None:
        if self.seq >= 0:
            self.lane.forget(self)
            self.model.leave_lane(self.lane, self.seq)
            self.seq = -1


class LlamaModel:
    def __init__(
        self, facts: ModelFacts, model: Any, n_threads: int, n_batch: int, batch_rows: int = 0
    ) -> None:
        self.facts = facts
        self.model = model
        exact = exact_decode_rows(
            model, facts.vocab_size, max(SEQUENCES_PER_CONTEXT, batch_rows), n_threads
        )
        #: sessions per context, and so rows per batched decode step: as many as are exact
        #: (at most SEQUENCES_PER_CONTEXT), unless the operator asked for a number
        self.max_decode_rows = batch_rows or min(exact, SEQUENCES_PER_CONTEXT)
        self.decode_batch_exact = self.max_decode_rows <= exact
        self._batch_rows = batch_rows
        #: sessions per context by KV cache type: a quantized cache runs other attention
        #: kernels, so its exact batch is measured apart, when its first lane opens
        self._rows_by_type = {"f16": self.max_decode_rows}
        #: lanes by (n_ctx, KV cache type): one llama_context holds one KV type
        self._lanes: dict[tuple[int, str], list[Lane]] = {}
        #: empty lanes kept for the next session of their size and type (``_lane.LanePool``)
        self.pool = LanePool(self._lane_bytes)
        #: llama.cpp contexts created for sessions (reuse from the pool creates none)
        self.contexts_created = 0
        self.vocab = ll.llama_model_get_vocab(model)
        self.n_threads = n_threads
        self.n_batch = n_batch
        self._eog: list[int] | None = None
        self._piece = ctypes.create_string_buffer(256)
        self._grammar_tokenizer = Once(lambda: grammar_tokenizer(self))

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        """See ``EngineModel.tokenize``. The text crosses as bytes with their length, never as a
        NUL-terminated string, so NULs stay text."""
        check_text(text, "text")
        ids = self._tokenize(text.encode("utf-8"), add_special, parse_special)
        return without_double_bos(
            ids,
            self.facts.bos_token_id,
            add_special,
            lambda: (
                self._tokenize(text.encode("utf-8"), False, parse_special)[:1]
                == [self.facts.bos_token_id]
            ),
        )

    def _tokenize(self, raw: bytes, add_special: bool, parse_special: bool) -> list[int]:
        capacity = len(raw) + 8
        while True:
            buffer = (ll.llama_token * capacity)()
            count = ll.llama_tokenize(
                self.vocab, raw, len(raw), buffer, capacity, add_special, parse_special
            )
            if count >= 0:
                return list(buffer[:count])
            capacity = -count

    def is_control(self, token: int) -> bool:
        return bool(ll.llama_vocab_get_attr(self.vocab, token) & ll.LLAMA_TOKEN_ATTR_CONTROL)

    def detokenize(self, ids: Sequence[int]) -> str:
        tokens = (ll.llama_token * len(ids))(*ids)
        capacity = max(64, len(ids) * 8)
        while True:
            out = ctypes.create_string_buffer(capacity)
            count = ll.llama_detokenize(self.vocab, tokens, len(ids), out, capacity, True, True)
            if count >= 0:
                return out.raw[:count].decode("utf-8", errors="replace")
            capacity = -count

    def piece(self, token: int) -> bytes:
        count = ll.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        if count < 0:
            bigger = ctypes.create_string_buffer(-count)
            count = ll.llama_token_to_piece(self.vocab, token, bigger, -count, 0, False)
            return bigger.raw[:count]
        return self._piece.raw[:count]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self.vocab, token))

    def end_of_generation_ids(self) -> list[int]:
        if self._eog is None:
            self._eog = [t for t in range(self.facts.vocab_size) if self.is_end_of_generation(t)]
        return self._eog

    def grammar_tokenizer(self) -> llguidance.LLTokenizer:
        return self._grammar_tokenizer.get()

    def _rows_for(self, kv_cache_type: str) -> int:
        rows = self._rows_by_type.get(kv_cache_type)
        if rows is None:
            up_to = max(SEQUENCES_PER_CONTEXT, self._batch_rows)
            exact = exact_decode_rows(
                self.model, self.facts.vocab_size, up_to, self.n_threads, kv_cache_type
            )
            # the operator's --decode-batch-rows holds for every type, as for f16
            rows = self._batch_rows or min(exact, SEQUENCES_PER_CONTEXT)
            self._rows_by_type[kv_cache_type] = rows
        return rows

    def open_session(self, n_ctx: int, kv_cache_type: str = "f16") -> LlamaSession:
        """A sequence of ``n_ctx`` cells in a lane of ``kv_cache_type`` (GGML_KV_TYPES; the
        caller checked it with :func:`kv_cache_refusal`).

        :raises SessionFatal: llama.cpp could not create the context.
        """
        if kv_cache_type not in GGML_KV_TYPES:
            raise ValueError(f"unknown KV cache type {kv_cache_type!r}")
        lanes = self._lanes.setdefault((n_ctx, kv_cache_type), [])
        lane = next((lane for lane in lanes if lane.has_room), None)
        if lane is None:
            lane = self.pool.take(n_ctx, kv_cache_type)
            if lane is not None:
                lanes.append(lane)
        if lane is None:
            self.contexts_created += 1
            lane = Lane(
                self.model,
                self.facts.vocab_size,
                n_ctx,
                self._rows_for(kv_cache_type),
                self.n_batch,
                self.n_threads,
                kv_cache_type,
            )
            lanes.append(lane)
        return LlamaSession(self, lane, n_ctx)

    def leave_lane(self, lane: Lane, seq: int) -> None:
        lane.give_back(seq)
        if lane.empty:  # kept for the next session of its size (bounded: ``LanePool``)
            self._lanes[(lane.n_ctx, lane.kv_cache_type)].remove(lane)
            self.pool.put(lane)

    def _lane_bytes(self, lane: Lane) -> int:
        """KV bytes ``lane`` holds: every sequence's n_ctx cells at its type's bytes a token
        (the arithmetic admission charges a session)."""
        return lane.seqs * lane.n_ctx * self.facts.kv_bytes_per_token_at(lane.kv_cache_type)

    def pooled_bytes(self) -> int:
        """See ``EngineModel.pooled_bytes``."""
        return self.pool.bytes

    def drop_pooled(self, keep: tuple[int, str] | None = None) -> int:
        """See ``EngineModel.drop_pooled``."""
        return self.pool.drop(keep)

    def decode_batch(self, feeds: Sequence[tuple[Any, int]]) -> None:
        """One token for each session of one lane, in one llama_decode."""
        # in sequence order: the same four rows out of order took 50 ms a step instead of 31
        # (measured here; the raw engine's batches are always in order)
        feeds = sorted(feeds, key=lambda feed: int(feed[0].seq))
        sessions: list[LlamaSession] = [session for session, _ in feeds]
        lane = sessions[0].lane
        assert all(s.lane is lane for s in sessions) and len(sessions) <= lane.seqs
        for session in sessions:
            check_room(session.kv_len, 1, session.n_ctx)
        rows = [
            (token, s.kv_len, s.seq, True) for s, (_, token) in zip(sessions, feeds, strict=True)
        ]
        status = lane.decode(rows, sessions)
        if status != 0:
            for session in sessions:
                ll.llama_memory_seq_rm(lane.memory, session.seq, session.kv_len, -1)
            raise SessionFatal(f"llama_decode failed with status {status}")
        for session in sessions:
            session.computed_one()

    def close(self) -> None:
        self.pool.drop()
        for lanes in self._lanes.values():
            for lane in lanes:
                lane.close()
        self._lanes.clear()
        if self.model:
            ll.llama_model_free(self.model)
            self.model = None


class LlamaBackend:
    name = "llama"
    capabilities = Capabilities(
        token_level_truncation=True,
        kv_copy_between_sessions=True,  # per-sequence state copied between sessions
        native_state_snapshot=True,  # per-sequence state, saved to files and restored
        # sessions of one context decode in one llama_decode, as many as are exact (measured
        # at load: LoadedModelStatus.decode_batch_rows; 1 means not here)
        batched_decode=True,
        chat_template=True,
        # the grammar mask, logit bias and logprobs work on the logits row every backend
        # samples from (modeld.structured, sessions._logprobs); tools and thinking are
        # rendering and parsing above the engine
        grammar=True,
        tools=True,
        thinking=True,
        logprobs=True,
        logit_bias=True,
    )

    #: llama.cpp places layers itself by n_gpu_layers (the plan's fit), not by a named device
    device = ""

    def __init__(self, n_threads: int, n_batch: int = 512, batch_rows: int = 0) -> None:
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.batch_rows = batch_rows
        self.fingerprint: dict[str, object] = {
            "backend": "llama",
            "engine": f"llama-cpp-python {ll.__version__}",
            # the default; a session of another KV cache type records its own (snapshots)
            "kv_type": "f16",
            "swa_full": True,
            # repacked and plain weights give slightly different logits: a restored session
            # continues exactly only on the same kind
            "repacked_weights": not cpu_has_amx(),
        }

    #: what ``SessionConfig.kv_cache_type`` may name here
    kv_cache_types: tuple[str, ...] = tuple(GGML_KV_TYPES)

    def check_kv_cache_type(self, facts: ModelFacts, kv_cache_type: str) -> None:
        """:raises UnsupportedFeature: ``facts``'s model cannot cache K and V as
        ``kv_cache_type`` (see :func:`kv_cache_refusal`); ``kv_cache_type`` is one of
        :attr:`kv_cache_types`."""
        refusal = kv_cache_refusal(facts, kv_cache_type)
        if refusal:
            raise UnsupportedFeature(
                refusal,
                feature="kv_cache_type",
                kv_cache_type=kv_cache_type,
                model=facts.name,
            )

    def load(self, spec: ModelSpec) -> LlamaModel:
        check_generates(spec.facts)  # an encoder has no lanes to measure or open
        _init_llama_once()
        # the plan's device choice: 0 unless this build offloads and a GPU has room
        layers = llama_gpu_layers(spec).n_gpu_layers
        model = ll.llama_model_load_from_file(str(spec.facts.path).encode(), weight_params(layers))
        if not model:
            raise ModelLoadFailed(f"llama.cpp could not load {spec.facts.path}")
        return LlamaModel(spec.facts, model, self.n_threads, self.n_batch, self.batch_rows)

    def embedder(self, spec: ModelSpec, shared: EngineModel | None) -> LlamaEmbedder:
        """Embedding contexts over ``shared``'s weights (a loaded generative model), or over
        weights loaded for them alone (an embedding-only model: it has no generation lanes).

        :raises ModelLoadFailed: llama.cpp could not load the file.
        """
        if isinstance(shared, LlamaModel):
            return LlamaEmbedder(spec.facts, shared.model, self.n_threads, owns=False)
        _init_llama_once()
        model = ll.llama_model_load_from_file(str(spec.facts.path).encode(), weight_params())
        if not model:
            raise ModelLoadFailed(f"llama.cpp could not load {spec.facts.path}")
        return LlamaEmbedder(spec.facts, model, self.n_threads, owns=True)
