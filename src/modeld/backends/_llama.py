"""The llama.cpp backend, on llama-cpp-python's low-level (ctypes) API.

Each session owns a llama_context over the shared model weights: its KV cache, logits and batch
are private, so one session's work never disturbs another's. Sampling runs in llama.cpp's native
sampler chain; Python only sees the chosen token id.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

import llama_cpp as ll
import numpy as np

from modeldconn._errors import (
    ModelLoadFailed,
    SessionFatal,
    UnsupportedFeature,
)

from ._base import Capabilities, EngineState, SamplingParams, check_room
from ._facts import ModelFacts, ModelSpec

__all__ = ["LlamaBackend", "cpu_has_amx", "weight_params"]

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


def weight_params() -> Any:
    """The model parameters modeld (and its benchmarks' llama.cpp baselines) load with: CPU
    only; repacked weight buffers ("extra buffer types": AMX, CPU_REPACK) except on AMX CPUs."""
    params = ll.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_extra_bufts = not cpu_has_amx()
    return params


def _init_llama_once() -> None:
    global _initialised, _silent_log
    with _init_lock:
        if _initialised:
            return
        _silent_log = ll.llama_log_callback(lambda level, text, data: None)
        ll.llama_log_set(_silent_log, None)
        ll.llama_backend_init()
        _initialised = True


class _LlamaSampler:
    def __init__(self, session: LlamaSession, params: SamplingParams, history: Sequence[int]):
        self._ctx = session.ctx
        self._session = session
        model = session.model
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        self._chain = chain
        if params.ignore_eos:
            eog = model.end_of_generation_ids()
            biases = (ll.llama_logit_bias * len(eog))(
                *(ll.llama_logit_bias(token=t, bias=float("-inf")) for t in eog)
            )
            ll.llama_sampler_chain_add(
                chain, ll.llama_sampler_init_logit_bias(model.facts.vocab_size, len(eog), biases)
            )
        if params.repeat_penalty != 1.0:
            ll.llama_sampler_chain_add(
                chain,
                ll.llama_sampler_init_penalties(
                    model.facts.vocab_size, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0
                ),
            )
        if params.greedy:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        else:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(params.top_k))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(params.top_p, 1))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(params.min_p, 1))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(params.temperature))
            seed = ll.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        # The penalties sampler must have seen the recent tape, as if it had generated it.
        if params.repeat_penalty != 1.0 and params.repeat_last_n != 0:
            window = history if params.repeat_last_n < 0 else history[-params.repeat_last_n :]
            for token in window:
                ll.llama_sampler_accept(chain, token)

    def sample(self) -> int:
        restored = self._session.restored_logits
        if restored is None:
            return int(ll.llama_sampler_sample(self._chain, self._ctx, -1))
        # The context has no logits of its own yet: run the same chain over the saved ones,
        # as llama_sampler_sample does over the context's.
        self._session.restored_logits = None
        vocab = self._session.model.facts.vocab_size
        candidates = (ll.llama_token_data * vocab)()
        view = np.ctypeslib.as_array(candidates)
        view["id"] = np.arange(vocab, dtype=np.int32)
        view["logit"] = np.frombuffer(restored, dtype=np.float32, count=vocab)
        view["p"] = 0.0
        array = ll.llama_token_data_array(data=candidates, size=vocab, selected=-1, sorted=False)
        ll.llama_sampler_apply(self._chain, ctypes.byref(array))
        token = int(candidates[array.selected].id)
        ll.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        if self._chain is not None:
            ll.llama_sampler_free(self._chain)
            self._chain = None


class LlamaSession:
    def __init__(self, model: LlamaModel, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        params = ll.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = min(model.n_batch, n_ctx)
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = model.n_threads
        # Full-size sliding-window KV, so the tape can be truncated at any token.
        params.swa_full = True
        params.no_perf = True
        self.ctx = ll.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise SessionFatal(f"llama.cpp could not create a context of {n_ctx} tokens")
        self._memory = ll.llama_get_memory(self.ctx)
        self._batch_size = int(params.n_batch)
        self._batch = ll.llama_batch_init(self._batch_size, 0, 1)
        self.kv_len = 0
        self._logits_for = -1  # kv_len at which the context's logits were produced
        #: logits carried over by load_state; the context itself has none until it computes
        self.restored_logits: bytes | None = None

    def truncate(self, keep: int) -> None:
        if keep < self.kv_len:
            ll.llama_memory_seq_rm(self._memory, 0, keep, -1)
            self.kv_len = keep
            self.restored_logits = None

    def prefill(self, tokens: Sequence[int]) -> None:
        check_room(self.kv_len, len(tokens), self.n_ctx)
        start = self.kv_len
        batch = self._batch
        self.restored_logits = None
        for offset in range(0, len(tokens), self._batch_size):
            chunk = tokens[offset : offset + self._batch_size]
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = self.kv_len + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = False
            batch.logits[len(chunk) - 1] = offset + len(chunk) == len(tokens)
            status = ll.llama_decode(self.ctx, batch)
            if status != 0:
                # leave the KV exactly as it was before this call
                ll.llama_memory_seq_rm(self._memory, 0, start, -1)
                self.kv_len = start
                self._logits_for = -1
                raise SessionFatal(f"llama_decode failed with status {status}")
            self.kv_len += len(chunk)
        self._logits_for = self.kv_len

    def save_state(self) -> EngineState:
        """The resident KV via llama.cpp's per-sequence state functions, plus current logits."""
        size = ll.llama_state_seq_get_size(self.ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = ll.llama_state_seq_get_data(self.ctx, buffer, size, 0)
        logits = None
        if self.logits_current():
            logits = ctypes.string_at(self._last_logits(), 4 * self.model.facts.vocab_size)
        return EngineState(ctypes.string_at(buffer, written), self.kv_len, logits)

    def load_state(self, state: EngineState) -> None:
        ll.llama_memory_seq_rm(self._memory, 0, -1, -1)
        self.kv_len = 0
        self._logits_for = -1
        self.restored_logits = None
        if state.kv_len:
            buffer = (ctypes.c_uint8 * len(state.kv)).from_buffer_copy(state.kv)
            if ll.llama_state_seq_set_data(self.ctx, buffer, len(state.kv), 0) == 0:
                raise SessionFatal("llama.cpp refused the saved state")
        self.kv_len = state.kv_len
        if state.logits is not None:
            self.restored_logits = state.logits
            self._logits_for = self.kv_len

    def _last_logits(self) -> Any:
        if self.restored_logits is not None:
            return self.restored_logits
        return ll.llama_get_logits_ith(self.ctx, -1)

    def logits_current(self) -> bool:
        return self._logits_for == self.kv_len and self.kv_len > 0

    def sampler(self, params: SamplingParams, history: Sequence[int]) -> _LlamaSampler:
        return _LlamaSampler(self, params, history)

    def close(self) -> None:
        if self.ctx:
            ll.llama_batch_free(self._batch)
            ll.llama_free(self.ctx)
            self.ctx = None


class LlamaModel:
    def __init__(self, facts: ModelFacts, model: Any, n_threads: int, n_batch: int) -> None:
        self.facts = facts
        self.model = model
        self.vocab = ll.llama_model_get_vocab(model)
        self.n_threads = n_threads
        self.n_batch = n_batch
        self._eog: list[int] | None = None
        self._piece = ctypes.create_string_buffer(256)

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        capacity = len(raw) + 8
        while True:
            buffer = (ll.llama_token * capacity)()
            count = ll.llama_tokenize(
                self.vocab, raw, len(raw), buffer, capacity, add_special, True
            )
            if count >= 0:
                return list(buffer[:count])
            capacity = -count

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

    def render_chat(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> str:
        template = self.facts.chat_template
        if not template:
            raise UnsupportedFeature("this model has no chat template; send text or token ids")
        keep = [(role.encode(), content.encode()) for role, content in messages]
        chat = (ll.llama_chat_message * len(keep))(
            *(ll.llama_chat_message(role=r, content=c) for r, c in keep)
        )
        capacity = 2 * sum(len(r) + len(c) for r, c in keep) + 256
        while True:
            out = ctypes.create_string_buffer(capacity)
            count = ll.llama_chat_apply_template(
                template.encode(), chat, len(keep), add_generation_prompt, out, capacity
            )
            if count < 0:
                raise UnsupportedFeature("llama.cpp does not recognise this model's chat template")
            if count <= capacity:
                return out.raw[:count].decode("utf-8", errors="replace")
            capacity = count

    def open_session(self, n_ctx: int) -> LlamaSession:
        return LlamaSession(self, n_ctx)

    def decode_batch(self, feeds: Sequence[tuple[Any, int]]) -> None:
        """Each session owns its context, so there is no one call for all: one at a time (the
        capability says batched_decode is absent, and the daemon does not call this)."""
        for session, token in feeds:
            session.prefill([token])

    def close(self) -> None:
        if self.model:
            ll.llama_model_free(self.model)
            self.model = None


class LlamaBackend:
    name = "llama"
    capabilities = Capabilities(
        token_level_truncation=True,
        kv_copy_between_sessions=True,  # per-sequence state copied between the sessions' contexts
        native_state_snapshot=True,  # per-sequence state, saved to files and restored
        batched_decode=False,
        chat_template=True,
        grammar=False,
    )

    def __init__(self, n_threads: int, n_batch: int = 512) -> None:
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.fingerprint: dict[str, object] = {
            "backend": "llama",
            "engine": f"llama-cpp-python {ll.__version__}",
            "kv_type": "f16",
            "swa_full": True,
            # repacked and plain weights give slightly different logits: a restored session
            # continues exactly only on the same kind
            "repacked_weights": not cpu_has_amx(),
        }

    def load(self, spec: ModelSpec) -> LlamaModel:
        _init_llama_once()
        model = ll.llama_model_load_from_file(str(spec.facts.path).encode(), weight_params())
        if not model:
            raise ModelLoadFailed(f"llama.cpp could not load {spec.facts.path}")
        return LlamaModel(spec.facts, model, self.n_threads, self.n_batch)
