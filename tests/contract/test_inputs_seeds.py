"""Issue 14, kind 5: every seed the wire accepts (uint64) is its own reproducible stream; no
value is llama.cpp's "random seed" marker."""

from __future__ import annotations

import pytest
from served_models import TINY

from modeldconn import Client, InvalidArgument

RANDOM = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "ignore_eos": True}


def _stream(client: Client, seed: int) -> tuple[int, ...]:
    with client.open_session(TINY) as session:
        session.ensure_prefix("The quick brown fox")
        return session.generate(max_tokens=24, seed=seed, **RANDOM).token_ids


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1, 2**32, 2**63, 2**64 - 1])
def test_each_seed_is_reproducible(client: Client, seed: int) -> None:
    assert _stream(client, seed) == _stream(client, seed)


def test_seeds_that_agree_in_their_low_32_bits_differ(client: Client) -> None:
    assert _stream(client, 7) != _stream(client, 7 + 2**32)
    assert _stream(client, 2**32 - 1) != _stream(client, 2**64 - 1)


def test_the_engine_seed_is_never_the_random_marker() -> None:
    from modeld.backends.llama._sampler import engine_seed

    seeds = [0, 7, 2**32 - 1, 2**32, 2**32 + 7, 2**64 - 1, *range(1000)]
    mapped = [engine_seed(s) for s in seeds]
    assert all(0 <= m < 0xFFFFFFFF for m in mapped)
    assert engine_seed(7) != engine_seed(7 + 2**32)


def test_a_seed_the_wire_cannot_carry_is_refused(client: Client) -> None:
    with client.open_session(TINY) as session:
        session.ensure_prefix("x")
        for bad in (-1, 2**64):
            with pytest.raises(InvalidArgument) as caught:
                session.generate(max_tokens=1, seed=bad)
            assert caught.value.metadata["field"] == "seed"
