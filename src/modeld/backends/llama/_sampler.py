"""llama.cpp's native sampler chain over one session's logits: Python only sees the token id."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING

import llama_cpp as ll
import numpy as np

from modeld.backends._base import SamplingParams
from modeldconn._errors import SessionFatal

if TYPE_CHECKING:
    from modeld.backends.llama._backend import LlamaSession

__all__ = ["LlamaSampler"]


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
