"""Embedding sides count in the daemon's memory budget (issue 17): an embedding-only model's
weights and every embedding context's buffers are in ModelPool.in_use, so an Embed cannot push
the daemon past --memory-limit, and sessions and model loads are judged with what embedding
holds. Real daemons: all-MiniLM-L6-v2 (llama; 91 MB of F32 weights, a context estimated at
105 MB: backends/llama/_embed.py) with Gemma 3 270M (253 MB) beside it."""

from __future__ import annotations

import pytest
from daemons import stop_served
from served_models import GEMMA, MINILM, serve_minilm

import modeldconn

MB = 1_000_000


def test_an_embedding_context_past_the_limit_is_refused_typed() -> None:
    # room for MiniLM's weights (preloaded by --model), not for its first context
    served = serve_minilm("llama", "--memory-limit", "150MB")
    try:
        with pytest.raises(modeldconn.InsufficientMemory) as caught:
            served.client.embed(MINILM, ["The river flows."])
        required = int(caught.value.metadata["required"])
        free = int(caught.value.metadata["free"])
        assert 80 * MB < required < 150 * MB, caught.value
        assert free <= 150 * MB - 90 * MB, caught.value  # the weights are counted
        assert "context" in str(caught.value)
        assert served.client.status().embedding_contexts == 0
        # typed, not fatal: the daemon still serves what fits
        assert served.client.describe(MINILM).facts.embedding_dims == 384
    finally:
        stop_served(served)


def test_sessions_are_admitted_with_what_embedding_holds() -> None:
    # 420 MB: MiniLM (91) + its context (~105) + Gemma's weights (253) do not fit; without
    # the context counted, Gemma's 253 MB + a 256-token KV would fit the remaining 329 MB
    served = serve_minilm("llama", "--memory-limit", "420MB")
    try:
        result = served.client.embed(MINILM, ["The river flows.", "A tax form."])
        assert result.vectors.shape == (2, 384)
        assert served.client.status().embedding_contexts == 1
        with pytest.raises(modeldconn.InsufficientMemory) as caught:
            served.client.open_session(GEMMA, n_ctx=256)
        assert int(caught.value.metadata["free"]) < 420 * MB - 91 * MB - 80 * MB, caught.value
    finally:
        stop_served(served)
