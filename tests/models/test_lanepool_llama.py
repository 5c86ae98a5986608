"""The llama engine's lane pool on real llama.cpp contexts (the tiny qwen2 GGUF and Gemma 3
270M): an empty lane is reused by the next session of its size and type (no context created),
a reused lane gives exactly a fresh context's logits and greedy tokens however its sequences
were used before, and the pool is bounded and counted. The engine classes are used directly
(no daemon); the budget side: tests/unit/sessions/test_lanepool_accounting.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from served_models import TINY_FILE, gemma_gguf

from modeld.backends._base import SamplingParams
from modeld.backends.llama._backend import LlamaBackend, LlamaModel, LlamaSession
from modeld.backends.llama._lane import IDLE_LANES
from modeld.models._facts import ModelSpec, facts_from_gguf

GREEDY = SamplingParams(
    temperature=0.0,
    top_k=40,
    top_p=1.0,
    min_p=0.0,
    repeat_penalty=1.0,
    repeat_last_n=0,
    seed=None,
    ignore_eos=True,
)
PROMPT = [2, *range(40, 90)]


@pytest.fixture(scope="module", params=["tiny", "gemma"])
def model(request: pytest.FixtureRequest) -> Iterator[LlamaModel]:
    path: Path = TINY_FILE if request.param == "tiny" else gemma_gguf()
    digest = hashlib.sha256(str(path).encode()).hexdigest()  # the engine never reads it
    facts = facts_from_gguf(path, name=request.param, digest=digest)
    engine = LlamaBackend(n_threads=2).load(ModelSpec(facts))
    yield engine
    engine.close()


def _logits(session: LlamaSession) -> bytes:
    """The session's current logits row, as llama.cpp left it."""
    row = session.logits_row()
    assert row is not None
    pointer = session.lane.row_pointer(row)
    return np.ctypeslib.as_array(pointer, shape=(session.model.facts.vocab_size,)).tobytes()


def _greedy(model: LlamaModel, session: LlamaSession, tape: Sequence[int], n: int) -> list[int]:
    history, out = list(tape), []
    for _ in range(n):
        sampler = session.sampler(GREEDY, history)
        token = sampler.sample()
        sampler.close()
        out.append(token)
        history.append(token)
        model.decode_batch([(session, token)])
    return out


def _run(model: LlamaModel, n_ctx: int) -> tuple[bytes, list[int], LlamaSession]:
    """PROMPT's logits and 10 greedy tokens in a new session (left open)."""
    session = model.open_session(n_ctx)
    session.prefill(PROMPT)
    return _logits(session), _greedy(model, session, PROMPT, 10), session


def test_an_empty_lane_is_reused_by_the_next_session_of_its_size(model: LlamaModel) -> None:
    model.drop_pooled()
    created = model.contexts_created
    first = model.open_session(256)
    lane = first.lane
    first.close()
    assert len(model.pool) == 1
    per_token = model.facts.kv_bytes_per_token_at("f16")
    assert model.pooled_bytes() == lane.seqs * 256 * per_token
    again = model.open_session(256)
    assert again.lane is lane and again.seq == 0
    assert model.contexts_created == created + 1  # reused: no second context
    assert model.pooled_bytes() == 0
    other = model.open_session(320)  # another size has a context of its own
    assert other.lane is not lane and model.contexts_created == created + 2
    again.close()
    other.close()


def test_a_reused_lane_continues_exactly_like_a_fresh_context(model: LlamaModel) -> None:
    model.drop_pooled()
    created = model.contexts_created
    fresh_logits, fresh_tokens, fresh = _run(model, 384)
    lane = fresh.lane
    fresh.close()
    # use every sequence of the pooled lane with other, longer tapes; leave logits rows owned
    others = [model.open_session(384) for _ in range(lane.seqs)]
    assert all(s.lane is lane for s in others)
    for i, session in enumerate(others):
        tape = [2, *range(100 + 7 * i, 300 + 7 * i)]
        session.prefill(tape)
        _greedy(model, session, tape, 3)
    for session in others:
        session.close()
    logits, tokens, reused = _run(model, 384)
    assert reused.lane is lane and model.contexts_created == created + 1
    assert logits == fresh_logits
    assert tokens == fresh_tokens
    reused.close()


def test_the_pool_is_bounded_and_its_bytes_counted(model: LlamaModel) -> None:
    model.drop_pooled()
    freed = model.pool.freed
    sizes = [192, 224, 256, 288][: IDLE_LANES + 1]
    sessions = [model.open_session(n_ctx) for n_ctx in sizes]
    lanes = [s.lane for s in sessions]
    for session in sessions:
        session.close()
    assert len(model.pool) == IDLE_LANES
    assert model.pool.freed == freed + 1  # the least recently pooled went
    assert lanes[0].ctx is None
    per_token = model.facts.kv_bytes_per_token_at("f16")
    kept = sum(lane.seqs * lane.n_ctx * per_token for lane in lanes[1:])
    assert model.pooled_bytes() == kept
    # admission's need for room frees them, but one of the size a session is about to take
    last = lanes[-1]
    assert model.drop_pooled(keep=(last.n_ctx, "f16")) == kept - last.seqs * last.n_ctx * per_token
    assert len(model.pool) == 1 and last.ctx is not None
    assert model.drop_pooled() == last.seqs * last.n_ctx * per_token
    assert model.pooled_bytes() == 0 and all(lane.ctx is None for lane in lanes)
