"""Sampling over a logits vector, for engines that hand back logits rather than tokens.

The steps and their order are llama.cpp's default chain (a grammar's mask, logit bias,
repetition penalty, then
greedy, or top-k, top-p, min-p, temperature and a seeded draw), so one SamplingParams means the
same thing on every backend. Each step is one vectorised pass; nothing loops over the vocabulary
in Python.

Seeds: numpy's generator takes the whole 64-bit seed, so every wire value is its own stream.
Temperatures below ``MIN_TEMPERATURE`` are greedy (``SamplingParams.greedy``): dividing by a
subnormal one would overflow every logit to +inf.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from modeld.backends._base import SamplingParams

__all__ = ["NumpySampler"]


class NumpySampler:
    def __init__(
        self,
        logits: Callable[[], np.ndarray],
        params: SamplingParams,
        history: Sequence[int],
        end_of_generation: Sequence[int],
        *,
        n_ctx: int,
    ) -> None:
        """``logits``: the current float32 logits row, (vocab,); ``history``: the tape so far;
        ``n_ctx``: the session's context, what ``repeat_last_n = -1`` looks back over."""
        self._logits = logits
        self._params = params
        self._banned = np.asarray(end_of_generation if params.ignore_eos else [], np.int64)
        self._bias_ids = np.asarray([t for t, _ in params.logit_bias], np.int64)
        self._bias = np.asarray([b for _, b in params.logit_bias], np.float32)
        window = params.penalty_window(n_ctx)
        self._penalised = window > 0
        self._recent: deque[int] = deque(history[-window:] if window else (), maxlen=window or 1)
        self._rng = np.random.default_rng(params.seed)

    def logits(self) -> np.ndarray:
        return self._logits()

    def sample(self, allowed: np.ndarray | None = None) -> int:
        logits = np.array(self._logits(), dtype=np.float32)
        if allowed is not None:
            logits[~allowed[: logits.size]] = -np.inf
        if self._bias_ids.size:
            logits[self._bias_ids] += self._bias
        if self._banned.size:
            logits[self._banned] = -np.inf
        if self._penalised and self._recent:
            seen = np.fromiter(set(self._recent), np.int64)
            penalty = self._params.repeat_penalty
            values = logits[seen]
            logits[seen] = np.where(values <= 0, values * penalty, values / penalty)
        token = int(np.argmax(logits)) if self._params.greedy else self._draw(logits)
        if self._penalised:
            self._recent.append(token)
        return token

    def _draw(self, logits: np.ndarray) -> int:
        params = self._params
        ids = np.arange(logits.size)
        if 0 < params.top_k < logits.size:
            top = np.argpartition(-logits, params.top_k - 1)[: params.top_k]
            ids, logits = top, logits[top]
        order = np.argsort(-logits, kind="stable")
        ids, logits = ids[order], logits[order]
        if params.top_p < 1.0:
            probs = _softmax(logits)
            keep = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
            ids, logits = ids[:keep], logits[:keep]
        if params.min_p > 0.0:
            probs = _softmax(logits)
            keep_mask = probs >= params.min_p * probs[0]
            ids, logits = ids[keep_mask], logits[keep_mask]
        probs = _softmax(logits / params.temperature)
        return int(ids[self._rng.choice(ids.size, p=probs)])

    def close(self) -> None:
        self._recent.clear()


def _softmax(logits: np.ndarray) -> np.ndarray:
    finite = np.where(np.isfinite(logits), logits, -np.inf)
    shifted = np.exp(finite - finite.max())
    total: np.ndarray = shifted / shifted.sum()
    return total
