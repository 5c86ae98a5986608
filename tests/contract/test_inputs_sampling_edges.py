"""Issue 14, kind 6: sampling parameters at their numeric edges. A temperature below
MIN_TEMPERATURE (1e-4) samples as its limit, greedy; NaN and infinities are refused; a repeat
penalty below 1e-3 is refused (dividing by it would overflow); huge windows are the context."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from daemons import Served, stop_served
from served_models import BACKENDS, GEMMA, TINY, serve_gemma

from modeld.backends._base import SamplingParams
from modeld.backends.openvino._sampler import NumpySampler
from modeldconn import Client, InvalidArgument

PROMPT = "Once upon a time a small model"
OPEN = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}
FLT_MAX = 3.4028234663852886e38
SUBNORMALS = [1e-38, 1e-45, 5e-5]


def _run(client: Client, model: str, **options: object) -> tuple[int, ...]:
    with client.open_session(model) as session:
        session.ensure_prefix(PROMPT)
        return session.generate(max_tokens=12, ignore_eos=True, **options).token_ids


@pytest.mark.parametrize("temperature", SUBNORMALS)
def test_a_vanishing_temperature_is_greedy(client: Client, temperature: float) -> None:
    greedy = _run(client, TINY)
    assert _run(client, TINY, temperature=temperature, seed=3, **OPEN) == greedy


@pytest.mark.parametrize(
    "options",
    [{"top_p": 1e-45}, {"min_p": 1.0}, {"top_k": 1}, {"top_p": 1e-45, "min_p": 1e-45}],
)
def test_filters_at_their_tightest_leave_the_greedy_token(
    client: Client, options: dict[str, object]
) -> None:
    greedy = _run(client, TINY)
    assert _run(client, TINY, temperature=1.0, seed=5, **{**OPEN, **options}) == greedy


def test_the_largest_values_are_reproducible_and_in_the_vocabulary(client: Client) -> None:
    options = {"temperature": FLT_MAX, "top_k": 2**31 - 1, "seed": 11}
    options |= {"repeat_penalty": 10.0, "repeat_last_n": 2**31 - 1}
    first = _run(client, TINY, **options)
    assert first == _run(client, TINY, **options) and len(first) == 12
    assert all(0 <= t < 512 for t in first)


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"temperature": -math.inf},
        {"top_p": math.nan},
        {"top_p": 0.0},
        {"top_p": math.inf},
        {"min_p": math.nan},
        {"min_p": -1e-45},
        {"repeat_penalty": 1e-38},
        {"repeat_penalty": 0.0},
        {"repeat_penalty": math.inf},
        {"repeat_penalty": math.nan},
        {"top_k": -1},
        {"repeat_last_n": -2},
    ],
)
def test_values_outside_the_rules_are_refused(client: Client, options: dict[str, object]) -> None:
    with client.open_session(TINY) as session:
        session.ensure_prefix(PROMPT)
        with pytest.raises(InvalidArgument) as caught:
            session.generate(max_tokens=1, **options)
        assert caught.value.metadata["field"].endswith(next(iter(options)))
        assert session.generate(max_tokens=2).final.completion_tokens == 2


def test_the_numpy_sampler_at_the_edges() -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0 - 1e-6, -1e30], np.float32)
    for temperature in (1e-38, 1e-45, 0.0, -1.0):
        params = SamplingParams(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, seed=1)
        assert NumpySampler(lambda: logits, params, [], [], n_ctx=8).sample() == 1
    drawn = {
        NumpySampler(
            lambda: logits,
            SamplingParams(temperature=FLT_MAX, top_k=0, top_p=1.0, min_p=0.0, seed=seed),
            [],
            [],
            n_ctx=8,
        ).sample()
        for seed in range(64)
    }
    assert drawn <= {0, 1, 2, 3, 4} and len(drawn) > 1  # the limit: uniform


@pytest.fixture(scope="module", params=BACKENDS)
def gemma(request: pytest.FixtureRequest) -> Iterator[Served]:
    daemon = serve_gemma(request.param)
    yield daemon
    stop_served(daemon)


def test_gemma_subnormal_temperature_is_greedy_not_the_last_id(gemma: Served) -> None:
    greedy = _run(gemma.client, GEMMA)
    tiny_t = _run(gemma.client, GEMMA, temperature=1e-38, **OPEN)
    assert tiny_t == greedy and 262143 not in tiny_t, gemma.backend
