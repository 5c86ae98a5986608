"""Embed on the real embedding model, all-MiniLM-L6-v2, on both backends (its GGUF on llama, its
feature-extraction IR on openvino; scripts/prepare_embedding_model.py), against the vectors
sentence-transformers computed for 24 sentences (tests/fixtures/minilm_reference.json)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemons import Served, run_modeld, stop_served
from served_models import BACKENDS, GEMMA, MINILM, serve_minilm

import modeldconn

REFERENCE = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "minilm_reference.json").read_text()
)
SENTENCES: list[str] = REFERENCE["sentences"]
VECTORS = np.asarray(REFERENCE["vectors"], dtype=np.float32)
#: "A man is eating food." in all-MiniLM-L6-v2's WordPiece ids, [CLS] ... [SEP]
EATING_IDS = [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]


@pytest.fixture(scope="module", params=BACKENDS)
def minilm(request: pytest.FixtureRequest) -> Iterator[Served]:
    daemon = serve_minilm(request.param)
    yield daemon
    stop_served(daemon)


def _vectors(result: modeldconn.Embeddings) -> np.ndarray:
    assert isinstance(result.vectors, np.ndarray)
    return result.vectors


def test_vectors_match_sentence_transformers(minilm: Served) -> None:
    result = minilm.client.embed(MINILM, SENTENCES)
    vectors = _vectors(result)
    assert result.dims == 384 and vectors.shape == (24, 384) and vectors.dtype == np.float32
    assert result.pooling == "mean" and result.normalized
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * VECTORS).sum(axis=1)
    assert cosines.min() >= 0.99, dict(zip(SENTENCES, cosines.round(4).tolist(), strict=True))
    # openvino: all 24 in one engine call; llama: one call each (llama/_embed.py says why);
    # usage counts [CLS] and [SEP]
    assert result.engine_calls == (24 if minilm.backend == "llama" else 1)
    assert result.usage.input_tokens[0] == len(EATING_IDS)
    assert result.usage.total_tokens == sum(result.usage.input_tokens)
    assert result.usage.truncated_tokens == (0,) * 24


def test_semantic_order(minilm: Served) -> None:
    texts = [
        "How do I reset my password?",
        "What is the procedure to change my password?",
        "Preheat the oven to 200 degrees and bake for 20 minutes.",
    ]
    v = _vectors(minilm.client.embed(MINILM, texts))
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_batch_equals_single_calls(minilm: Served) -> None:
    texts = [f"{s} (variant {i})" if i >= 24 else s for i, s in enumerate(SENTENCES * 3)][:64]
    batch = _vectors(minilm.client.embed(MINILM, texts))
    singles = np.stack([_vectors(minilm.client.embed(MINILM, [t]))[0] for t in texts])
    # openvino (f32): within 1e-5. llama: each input alone in its llama_decode, batch or not,
    # so bit for bit (packed several to a call, 3.2e-5 apart: llama/_embed.py)
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    if minilm.backend == "llama":
        assert np.array_equal(batch, singles), float(np.abs(batch - singles).max())
    assert (batch * singles).sum(axis=1).min() > 0.99999


def test_token_ids_and_unnormalized_and_pooling(minilm: Served) -> None:
    by_text = minilm.client.embed(MINILM, [SENTENCES[0]], normalize=False)
    by_ids = minilm.client.embed(MINILM, [EATING_IDS], normalize=False)
    np.testing.assert_allclose(_vectors(by_text), _vectors(by_ids), atol=1e-5)
    assert not by_text.normalized and float(np.linalg.norm(_vectors(by_text)[0])) > 1.5
    cls = minilm.client.embed(MINILM, [SENTENCES[0]], pooling="cls")
    assert cls.pooling == "cls"
    assert float(_vectors(cls)[0] @ _vectors(minilm.client.embed(MINILM, [SENTENCES[0]]))[0]) < 0.99


def test_overflow_and_truncation_are_typed(minilm: Served) -> None:
    long = "word " * 600  # 602 tokens with [CLS] and [SEP]; the model takes 512
    with pytest.raises(modeldconn.ContextOverflow) as overflow:
        minilm.client.embed(MINILM, ["short", long])
    meta = overflow.value.metadata
    assert (meta["input"], meta["tokens"], meta["n_ctx"]) == ("1", "602", "512")
    result = minilm.client.embed(MINILM, ["short", long], truncate=True)
    assert result.usage.input_tokens[1] == 512 and result.usage.truncated_tokens == (0, 90)


def test_empty_inputs_are_invalid(minilm: Served) -> None:
    with pytest.raises(modeldconn.InvalidArgument) as empty_batch:
        minilm.client.embed(MINILM, [])
    assert empty_batch.value.metadata["field"] == "inputs"
    with pytest.raises(modeldconn.InvalidArgument) as empty_text:
        minilm.client.embed(MINILM, ["fine", ""])
    assert empty_text.value.metadata["field"] == "inputs[1]"
    with pytest.raises(modeldconn.InvalidArgument) as pooling:
        minilm.client.embed(MINILM, ["fine"], pooling="max")
    assert pooling.value.metadata["field"] == "pooling"


def test_describe_status_and_capability_mismatch(minilm: Served) -> None:
    facts = minilm.client.describe(MINILM).facts
    assert (facts.tasks, facts.embedding_dims, facts.pooling) == (("embed",), 384, "mean")
    minilm.client.embed(MINILM, ["warm"])
    status = minilm.client.status()
    assert status.embedding_contexts >= 1
    assert [m.name for m in status.embedding_models] == [MINILM]
    with pytest.raises(modeldconn.CapabilityMismatch) as mismatch:
        minilm.client.open_session(MINILM)
    assert mismatch.value.metadata["task"] == "generate"
    with pytest.raises(modeldconn.CapabilityMismatch):  # tapes' tokens: sessions' models only
        minilm.client.tokenize(MINILM, "hello world")


def test_async_client_embeds(minilm: Served) -> None:
    import asyncio

    async def run() -> np.ndarray:
        async with modeldconn.AsyncClient(data_root=minilm.root) as client:
            return _vectors(await client.embed(MINILM, SENTENCES[:2]))

    np.testing.assert_allclose(asyncio.run(run()), VECTORS[:2], atol=2e-3)


def test_cli_embed_json_and_status(minilm: Served) -> None:
    root = str(minilm.root)
    done = run_modeld("embed", MINILM, *SENTENCES[:2], "--json", "--data-root", root)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["dims"] == 384 and document["pooling"] == "mean"
    assert document["usage"]["input_tokens"][0] == len(EATING_IDS)
    np.testing.assert_allclose(np.asarray(document["embeddings"]), VECTORS[:2], atol=2e-3)
    status = run_modeld("status", "--data-root", root)
    assert status.returncode == 0 and f"embedding  {MINILM}" in status.stdout, status.stdout
    refused = run_modeld("embed", MINILM, "", "--data-root", root)
    assert refused.returncode != 0 and "inputs[0]" in refused.stderr


@pytest.fixture(scope="module")
def minilm_llama() -> Iterator[Served]:
    daemon = serve_minilm("llama")
    yield daemon
    stop_served(daemon)


def _greedy(client: modeldconn.Client, gaps: list[float] | None = None) -> list[int]:
    tokens: list[int] = []
    with client.open_session(GEMMA, n_ctx=512) as session:
        session.ensure_prefix("The history of the river Thames begins")
        last = time.perf_counter()
        for chunk in session.decode(max_tokens=48, ignore_eos=True):
            now = time.perf_counter()
            if gaps is not None:
                gaps.append(now - last)
            last = now
            tokens.extend(chunk.token_ids)
    return tokens


def test_concurrent_embedders_leave_decoding_unchanged(minilm_llama: Served) -> None:
    """Three clients embed 256 texts each while a Gemma session decodes greedily: the session
    gets exactly its tokens, and no gap between its tokens grows by a whole batch."""
    alone_gaps: list[float] = []
    alone = _greedy(minilm_llama.client, alone_gaps)
    texts = [f"{SENTENCES[i % 24]} number {i}" for i in range(256)]
    errors: list[BaseException] = []
    busy = threading.Event()

    def embed_loop() -> None:
        with modeldconn.Client(data_root=minilm_llama.root) as client:
            try:
                busy.set()
                for _ in range(2):
                    assert _vectors(client.embed(MINILM, texts)).shape == (256, 384)
            except BaseException as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=embed_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    busy.wait(5)
    busy_gaps: list[float] = []
    together = _greedy(minilm_llama.client, busy_gaps)
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert together == alone
    # one 256-text batch takes several steps (<= 512 tokens each); a token waits for at most
    # a step per embedding client (3 here), never for a whole batch
    whole_batch = _timed(lambda: minilm_llama.client.embed(MINILM, texts))
    worst = max(busy_gaps[1:])
    print(
        f"decode gap p50 alone {np.median(alone_gaps[1:]) * 1e3:.1f} ms, worst with 3 "
        f"embedders {worst * 1e3:.1f} ms; one 256-text batch {whole_batch * 1e3:.0f} ms"
    )
    assert worst < whole_batch * 0.9


def _timed(fn: object) -> float:
    assert callable(fn)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_generative_model_embeds_on_llama(minilm_llama: Served) -> None:
    facts = minilm_llama.client.describe(GEMMA).facts
    assert "embed" in facts.tasks and facts.pooling == "mean"
    result = minilm_llama.client.embed(GEMMA, ["The river flows.", "A tax form."])
    assert result.dims == facts.embedding_dims == 640 and result.pooling == "mean"
    np.testing.assert_allclose(np.linalg.norm(_vectors(result), axis=1), 1.0, atol=1e-5)
    last = minilm_llama.client.embed(GEMMA, ["The river flows."], pooling="last")
    assert last.pooling == "last"
