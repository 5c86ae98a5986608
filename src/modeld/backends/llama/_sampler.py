"""llama.cpp's native sampler chain over one session's logits: Python only sees the token id."""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import llama_cpp as ll
import numpy as np

from modeld.backends._base import SamplingParams
from modeldconn._errors import SessionFatal

if TYPE_CHECKING:
    from modeld.backends.llama._backend import LlamaSession

__all__ = ["LlamaSampler", "engine_seed"]

#: llama_sampler_init_dist takes 32 bits, and this value of them means "pick a random seed"
_RANDOM_SEED = ll.LLAMA_DEFAULT_SEED


def engine_seed(seed: int) -> int:
    """A wire seed (0..2**64-1) as llama.cpp's 32-bit seed, never its random marker.

    All 64 bits are hashed (so 7 and 7 + 2**32 are different streams) and reduced modulo the
    marker, which leaves 0..2**32-2: every seed is reproducible. Distinct seeds share a stream
    only by a hash collision (about one pair in 2**32), not by a pattern.
    """
    digest = hashlib.blake2b(seed.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _RANDOM_SEED


class LlamaSampler:
    def __init__(self, session: LlamaSession, params: SamplingParams, history: Sequence[int]):
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
        # llama.cpp reads a penalty_last_n of -1 as 0, "off": the whole context is n_ctx here
        window = params.penalty_window(session.n_ctx)
        if window:
            ll.llama_sampler_chain_add(
                chain,
                ll.llama_sampler_init_penalties(
                    model.facts.vocab_size, window, params.repeat_penalty, 0.0, 0.0
                ),
            )
        if params.greedy:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        else:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(params.top_k))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(params.top_p, 1))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(params.min_p, 1))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(params.temperature))
            seed = _RANDOM_SEED if params.seed is None else engine_seed(params.seed)
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        # The penalties sampler must have seen the recent tape, as if it had generated it.
        if window:
            for token in history[-window:]:
                ll.llama_sampler_accept(chain, token)

    def sample(self) -> int:
        session = self._session
        row = session.logits_row()
        if row is not None:
            return int(ll.llama_sampler_sample(self._chain, session.lane.ctx, row))
        # The logits are a copy (restored from a saved state, or kept when the shared context
        # decoded for a neighbour): run the same chain over them, as llama_sampler_sample does
        # over the context's.
        saved = session.saved_logits
        if saved is None:
            raise SessionFatal("no logits for the last resident token")
        vocab = session.model.facts.vocab_size
        candidates = (ll.llama_token_data * vocab)()
        view = np.ctypeslib.as_array(candidates)
        view["id"] = np.arange(vocab, dtype=np.int32)
        view["logit"] = saved[:vocab]
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
