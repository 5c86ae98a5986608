"""KV cache types on Gemma 3 270M, llama backend (issue 18, part 4): a q8_0 session keeps warm ==
cold, takes about half the KV bytes a token of an f16 one (measured from llama.cpp's own
per-sequence state), continues exactly after parking and from its snapshot, and never mixes
with f16 KV (a snapshot, a prefix donor)."""

from __future__ import annotations

from collections.abc import Iterator

import exact_prefix_checks as checks
import pytest
from daemons import Served, stop_served
from served_models import GEMMA, serve_gemma

import modeldconn
from modeld.models._facts import KV_TYPE_BYTES
from modeld.sessions._prefill import PREFIX_CHUNK

OUT = 8  #: greedy tokens compared per continuation
GREEDY = {"max_tokens": OUT, "ignore_eos": True}


@pytest.fixture(scope="module")
def gemma() -> Iterator[Served]:
    daemon = serve_gemma("llama")
    yield daemon
    stop_served(daemon)


def _cold(client: modeldconn.Client, prompt: list[int], kv_type: str) -> tuple[int, ...]:
    with client.open_session(GEMMA, exact_prefix=True, kv_cache_type=kv_type) as session:
        assert session.info.kv_cache_type == kv_type
        result = session.ensure_prefix(prompt)
        assert result.reused == 0 and result.shared == 0
        return session.generate(**GREEDY).token_ids  # type: ignore[arg-type]


@pytest.mark.parametrize("p", [PREFIX_CHUNK + 1, 2 * PREFIX_CHUNK + 7])
def test_warm_equals_cold_with_q8_0(gemma: Served, p: int) -> None:
    client = gemma.client
    doc = checks.document(client, GEMMA, 4 * PREFIX_CHUNK)
    suffixes = (1, PREFIX_CHUNK - 1)
    expected = {s: _cold(client, doc[: p + s], "q8_0") for s in suffixes}
    with client.open_session(GEMMA, exact_prefix=True, kv_cache_type="q8_0") as warm:
        warm.ensure_prefix(doc[:p])
        warm.generate(max_tokens=3, ignore_eos=True)  # generated tokens on the tape
        for s in suffixes:
            again = warm.ensure_prefix(doc[:p])
            assert again.reused in (p, p - p % PREFIX_CHUNK), again
            got = warm.generate(suffix=doc[p : p + s], **GREEDY)  # type: ignore[arg-type]
            assert got.token_ids == expected[s], (p, s)


def _kv_bytes_per_token(client: modeldconn.Client, doc: list[int], kv_type: str) -> float:
    """From two snapshots of one session, 64 and 320 tokens long: each file is the engine's
    per-sequence state (llama_state_seq_get_data) plus the same logits and header, so their
    difference is 256 tokens' KV (and 256 tape ids in the header, ~7 B each)."""
    with client.open_session(GEMMA, kv_cache_type=kv_type) as session:
        session.ensure_prefix(doc[:64])
        short = session.snapshot().bytes
        session.ensure_prefix(doc[:320])
        long = session.snapshot().bytes
    return (long - short) / 256


def test_q8_0_takes_about_half_the_kv_bytes_of_f16(gemma: Served) -> None:
    client = gemma.client
    doc = checks.document(client, GEMMA, 320)
    measured = {t: _kv_bytes_per_token(client, doc, t) for t in ("f16", "q8_0", "q4_0")}
    assert 0.45 <= measured["q8_0"] / measured["f16"] <= 0.6, measured
    assert 0.25 <= measured["q4_0"] / measured["f16"] <= 0.33, measured
    # the arithmetic admission charges (ModelFacts.kv_bytes_per_token_at) is what llama.cpp
    # keeps, within its per-cell bookkeeping (position and sequence, 24 B) and the tape ids
    facts = client.describe(GEMMA).facts
    elements = facts.layers * facts.kv_heads * 2 * facts.head_dim  # Gemma: V heads as wide
    for kv_type, (num, den) in KV_TYPE_BYTES.items():
        predicted = elements * num / den
        assert predicted <= measured[kv_type] <= predicted + 48, (kv_type, measured)


def test_a_q8_0_snapshot_never_restores_into_an_f16_session(gemma: Served) -> None:
    client = gemma.client
    with client.open_session(GEMMA, kv_cache_type="q8_0") as session:
        session.ensure_prefix("The lighthouse keeper's youngest daughter kept a diary. On")
        saved = session.snapshot()
        expected = session.generate(**GREEDY).token_ids  # type: ignore[arg-type]
    before = client.status().sessions_open
    with pytest.raises(modeldconn.SnapshotMismatch) as refused:
        client.restore(saved.snapshot_id, GEMMA, kv_cache_type="f16")
    assert refused.value.metadata["snapshot_kv_cache_type"] == "q8_0"
    assert refused.value.metadata["kv_cache_type"] == "f16"
    assert client.status().sessions_open == before
    # unset: the snapshot's own type, and it continues exactly
    with client.restore(saved.snapshot_id, GEMMA) as restored:
        assert restored.info.kv_cache_type == "q8_0"
        assert restored.generate(**GREEDY).token_ids == expected  # type: ignore[arg-type]
    with client.restore(saved.snapshot_id, GEMMA, kv_cache_type="q8_0") as restored:
        assert restored.generate(**GREEDY).token_ids == expected  # type: ignore[arg-type]


def test_prefixes_are_shared_only_between_sessions_of_one_type(gemma: Served) -> None:
    client = gemma.client
    doc = checks.document(client, GEMMA, 3 * PREFIX_CHUNK)
    with client.open_session(GEMMA, kv_cache_type="f16") as f16:
        f16.ensure_prefix(doc)
        with client.open_session(GEMMA, kv_cache_type="q8_0") as first:
            # the f16 session holds the whole prompt, but its KV is of another type
            assert first.ensure_prefix(doc).shared == 0
            expected = first.generate(**GREEDY).token_ids  # type: ignore[arg-type]
            first.ensure_prefix(doc)  # the tape back to the prompt alone
            with client.open_session(GEMMA, kv_cache_type="q8_0") as second:
                got = second.ensure_prefix(doc)
                assert got.shared >= PREFIX_CHUNK, got  # from the q8_0 one
                assert second.generate(**GREEDY).token_ids == expected  # type: ignore[arg-type]


def test_a_parked_q8_0_session_continues_exactly() -> None:
    served = serve_gemma("llama", "--max-live-sessions", "1")
    try:
        client = served.client
        prompt = "Entry 1: the old archive kept letters about the slow river and its mills."
        with client.open_session(GEMMA, kv_cache_type="q8_0") as unparked:
            unparked.ensure_prefix(prompt)
            expected = unparked.generate(**GREEDY).token_ids  # type: ignore[arg-type]
        with client.open_session(GEMMA, kv_cache_type="q8_0") as session:
            session.ensure_prefix(prompt)
            with client.open_session(GEMMA, kv_cache_type="f16") as other:
                other.ensure_prefix("Another conversation takes the one live context.")
                assert client.status().sessions_parked == 1
            got = session.generate(**GREEDY).token_ids  # type: ignore[arg-type]
            assert got == expected
            assert client.status().restores >= 1
    finally:
        stop_served(served)
