"""llama.cpp's native sampler chain over one session's logits.

Unconstrained, the chain runs over the context's own logits row and Python only sees the token
id. Under a grammar's mask (or over logits kept as a copy) the same chain runs over a candidate
array built from the row, masked tokens at -inf: llama_sampler_sample builds exactly that array
(every id in order, its logit, p = 0), so both paths sample the same token from the same logits.
"""

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
        self._vocab = model.facts.vocab_size
        self._candidates: ctypes.Array[ll.llama_token_data] | None = None
        self._ids = np.arange(self._vocab, dtype=np.int32)
        if params.logit_bias:
            pairs = params.logit_bias
            biases = (ll.llama_logit_bias * len(pairs))(
                *(ll.llama_logit_bias(token=t, bias=b) for t, b in pairs)
            )
            ll.llama_sampler_chain_add(
                chain, ll.llama_sampler_init_logit_bias(self._vocab, len(pairs), biases)
            )
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

    def logits(self) -> np.ndarray:
        session = self._session
        row = session.logits_row()
        if row is not None:
            pointer = session.lane.row_pointer(row)
            return np.ctypeslib.as_array(pointer, shape=(self._vocab,))
        # The logits are a copy (restored from a saved state, or kept when the shared context
        # decoded for a neighbour)
        saved = session.saved_logits
        if saved is None:
            raise SessionFatal("no logits for the last resident token")
        return saved[: self._vocab]

    def sample(self, allowed: np.ndarray | None = None) -> int:
        session = self._session
        row = session.logits_row()
        if row is not None and allowed is None:
            return int(ll.llama_sampler_sample(self._chain, session.lane.ctx, row))
        if self._candidates is None:
            self._candidates = (ll.llama_token_data * self._vocab)()
        candidates = self._candidates
        view = np.ctypeslib.as_array(candidates)
        # the chain reorders and shrinks the array in place: every field is written anew
        view["id"] = self._ids
        view["logit"] = self.logits()
        if allowed is not None:
            view["logit"][~allowed[: self._vocab]] = -np.inf
        view["p"] = 0.0
        array = ll.llama_token_data_array(
            data=candidates, size=self._vocab, selected=-1, sorted=False
        )
        ll.llama_sampler_apply(self._chain, ctypes.byref(array))
        token = int(candidates[array.selected].id)
        ll.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        if self._chain is not None:
            ll.llama_sampler_free(self._chain)
            self._chain = None
