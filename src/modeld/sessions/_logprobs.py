"""Log-probabilities of generated tokens, from the engine's raw logits.

``log_softmax`` over the logits exactly as the model computed them, before any sampler step
(logit bias, penalties, a grammar's mask, temperature, truncation): what the model thinks of
each token, the figure OpenAI's and llama-server's ``logprobs`` report. Computed in float64,
so the values match a reference log-softmax of the same logits to well under 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from modeldconn._types import TokenLogprob, TopLogprob

__all__ = ["token_logprob"]


def token_logprob(
    logits: np.ndarray, token: int, top: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """``token``'s logprob and the ``top`` most likely tokens' (most likely first; ties by
    id), from ``logits`` (float32, shape (vocab,)); ``piece`` gives a token's bytes."""
    values = logits.astype(np.float64)
    peak = values.max()
    log_total = peak + np.log(np.exp(values - peak).sum())
    best: list[TopLogprob] = []
    if top > 0:
        count = min(top, values.size)
        ids = np.argpartition(-values, count - 1)[:count]
        ids = ids[np.lexsort((ids, -values[ids]))]
        best = [
            TopLogprob(int(t), float(values[t] - log_total), piece(int(t))) for t in ids.tolist()
        ]
    return TokenLogprob(token, float(values[token] - log_total), piece(token), tuple(best))
