"""The real default model, Gemma 3 270M, on each backend: the packaged GGUF on llama, its int8 IR
(converted offline by scripts/prepare_openvino_ir.py) on openvino."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import Served, stop_served
from served_models import (
    BACKENDS,
    GEMMA,
    GEMMA_FILE,
    GEMMA_IR_LINK,
    gemma_gguf,
    gemma_ir,
    require_backend,
    serve_gemma,
)

#: Gemma 3's own ids for this text (llama.cpp's tokenizer over the GGUF vocabulary, BOS first)
TEXT = "Hello, world! Ünïcödé 🚀 survives."
TEXT_IDS = (2, 9259, 236764, 1902, 236888, 15356, 236749, 238527, 236755, 55515, 236859, 236743)
TEXT_IDS += (242015, 103827, 236761)


@pytest.fixture(scope="module", params=BACKENDS)
def gemma(request: pytest.FixtureRequest) -> Iterator[Served]:
    daemon = serve_gemma(request.param)
    yield daemon
    stop_served(daemon)


def test_completions_are_coherent(gemma: Served) -> None:
    with gemma.client.open_session(GEMMA) as session:
        session.ensure_prefix(
            "Q: What is the capital of Italy?\nA: Rome\n"
            "Q: What is the capital of Japan?\nA: Tokyo\n"
            "Q: What is the capital of France?\nA:"
        )
        out = session.generate(max_tokens=4)
    assert out.text.split()[0] == "Paris", (gemma.backend, out.text)


def test_warm_equals_cold(gemma: Served) -> None:
    prefix = "A short guide to the planets of the solar system. Mercury is the smallest. " * 8
    suffix = " The largest planet is"
    client = gemma.client
    with client.open_session(GEMMA) as warm:
        warm.ensure_prefix(prefix)
        warm.prefill_suffix(" Something else.")
        warm.generate(max_tokens=6)
        again = warm.ensure_prefix(prefix)
        assert again.prefilled == 0 and again.reused == again.prefix_tokens
        warm_out = warm.generate(suffix=suffix, max_tokens=16)
        assert warm_out.final.reused_tokens == again.prefix_tokens
    with client.open_session(GEMMA) as cold:
        first = cold.ensure_prefix(prefix)
        assert first.reused == 0 and first.prefilled == again.prefix_tokens
        cold_out = cold.generate(suffix=suffix, max_tokens=16)
    assert cold_out.token_ids == warm_out.token_ids and cold_out.text == warm_out.text


def test_the_same_ids_and_facts_as_the_gguf(gemma: Served) -> None:
    client = gemma.client
    assert client.tokenize(GEMMA, TEXT, add_special=True) == list(TEXT_IDS)
    assert client.detokenize(GEMMA, TEXT_IDS[1:]) == TEXT
    facts = client.describe(GEMMA).facts
    assert (facts.layers, facts.attention_heads, facts.kv_heads, facts.head_dim) == (18, 4, 1, 256)
    assert (facts.vocab_size, facts.context_length) == (262144, 32768)
    assert facts.sliding_window == 512 and facts.bos_token_id == 2
    assert set(facts.eos_token_ids) >= {1, 106} or facts.eos_token_ids == (1,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_streamed_pieces_are_byte_exact(backend: str, tmp_path: Path) -> None:
    """What Decode streams is built from per-token pieces: they must join to the exact bytes,
    emoji split over byte tokens included."""
    from modeld.backends import make_backend
    from modeld.models._catalog import ModelCatalog

    require_backend(backend)
    models = tmp_path / "models"
    models.mkdir()
    if backend == "openvino":
        (models / GEMMA_IR_LINK).symlink_to(gemma_ir())
    else:
        (models / GEMMA_FILE).symlink_to(gemma_gguf())
    spec = ModelCatalog(tmp_path, backend).resolve(GEMMA, "", "", "")
    engine = make_backend(backend, n_threads=2, cache_dir=tmp_path / "cache").load(spec)
    try:
        assert b"".join(engine.piece(t) for t in TEXT_IDS[1:]) == TEXT.encode()
        assert engine.piece(TEXT_IDS[0]) == b""  # BOS is a control token: no text
        assert engine.is_end_of_generation(106) and engine.is_end_of_generation(1)
    finally:
        engine.close()
