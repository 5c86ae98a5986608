"""The native in-process llama.cpp loop: the engine's own limit, for side-by-side ratios.

Same low-level calls modeld makes (one context, one sequence, greedy sampler chain), minus the
daemon: no RPC, no worker thread, no session bookkeeping.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from typing import Any

import llama_cpp as ll
import llama_cpp.llama_cpp as ll_module

from modeld.backends.llama._backend import cpu_has_amx, weight_params

__all__ = ["NativeLoop", "cpu_has_amx", "load_weights", "load_weights_as_modeld"]

_quiet: Any = None


def _init() -> None:
    global _quiet
    if _quiet is None:
        _quiet = ll.llama_log_callback(lambda level, text, data: None)
        ll.llama_log_set(_quiet, None)
        ll.llama_backend_init()


def load_weights(path: str) -> Any:
    """The GGUF's weights, placed as the daemon places them (see ``weight_params``)."""
    _init()
    return ll.llama_model_load_from_file(path.encode(), weight_params())


def load_weights_as_modeld() -> None:
    """Make llama-cpp-python's ``Llama`` (and its server) place weights as the daemon does: its
    constructor has no switch for llama.cpp's extra buffer types, so its defaults become ours."""
    ll_module.llama_model_default_params = weight_params


class NativeLoop:
    def __init__(self, path: str, *, n_ctx: int, n_threads: int, n_batch: int = 512) -> None:
        self.model = load_weights(path)
        self.vocab = ll.llama_model_get_vocab(self.model)
        params = ll.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_threads = params.n_threads_batch = n_threads
        params.swa_full = True
        params.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, params)
        self.memory = ll.llama_get_memory(self.ctx)
        self.n_batch = n_batch
        self.batch = ll.llama_batch_init(n_batch, 0, 1)
        self.sampler = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        ll.llama_sampler_chain_add(self.sampler, ll.llama_sampler_init_greedy())
        self.n_past = 0

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        raw = text.encode()
        buf = (ll.llama_token * (len(raw) + 8))()
        n = ll.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), add_special, True)
        return list(buf[:n])

    def truncate(self, keep: int) -> None:
        ll.llama_memory_seq_rm(self.memory, 0, keep, -1)
        self.n_past = keep

    def prefill(self, tokens: Sequence[int]) -> None:
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            self.batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                self.batch.token[i] = token
                self.batch.pos[i] = self.n_past + i
                self.batch.n_seq_id[i] = 1
                self.batch.seq_id[i][0] = 0
                self.batch.logits[i] = i == len(chunk) - 1
            assert ll.llama_decode(self.ctx, self.batch) == 0
            self.n_past += len(chunk)

    def sample(self) -> int:
        return int(ll.llama_sampler_sample(self.sampler, self.ctx, -1))

    def generate(self, n: int) -> tuple[list[int], float, float]:
        """Greedy ``n`` tokens after the resident ones: (tokens, ttft_s, decode_s after first)."""
        started = time.perf_counter()
        out = [self.sample()]
        first = time.perf_counter()
        for _ in range(n - 1):
            self.prefill(out[-1:])
            out.append(self.sample())
        return out, first - started, time.perf_counter() - first

    def piece_text(self, tokens: Sequence[int]) -> str:
        buf = ctypes.create_string_buffer(256)
        data = b""
        for token in tokens:
            n = ll.llama_token_to_piece(self.vocab, token, buf, 256, 0, False)
            data += buf.raw[:n]
        return data.decode(errors="replace")
