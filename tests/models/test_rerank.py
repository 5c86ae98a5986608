"""Rerank on real models: the generative yes/no method on Gemma (both backends), the
cross-encoder method on the tiny random BERT reranker fixture (llama; scores equal llama.cpp's
own rank output for the same pairs, computed in this process through its C API), typed errors."""

from __future__ import annotations

import asyncio
import ctypes
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import Served, run_modeld, start_served, stop_served
from served_models import BACKENDS, GEMMA, MINILM, minilm_files, require_backend, serve_gemma

import modeldconn

RERANKER = "tiny-bert-reranker"
RERANKER_FILE = Path(__file__).parent.parent / "fixtures" / f"{RERANKER}.gguf"
QUERY = "Which river is the longest in the world?"
#: Gemma 3 270M is a weak judge (every score lands in 0.6-0.8 on both backends); with these
#: documents the river ranks first on both, by 0.08 on llama (Q4_K_M) and 0.01 on openvino
DOCUMENTS = [
    "Tax form W-2 reports the wages an employer paid and the taxes it withheld.",
    "The Amazon is a river in South America that carries more water than any other river.",
    "Pancake recipe: two cups of flour, two eggs, a cup of milk and a pinch of salt.",
]


@pytest.fixture(scope="module", params=BACKENDS)
def gemma(request: pytest.FixtureRequest) -> Iterator[Served]:
    daemon = serve_gemma(request.param)
    yield daemon
    stop_served(daemon)


@pytest.fixture(scope="module")
def reranker() -> Iterator[Served]:
    """The tiny BERT reranker on llama, with all-MiniLM-L6-v2 beside it (embedding-only)."""
    require_backend("llama")
    files = minilm_files()
    models = {f"{RERANKER}.gguf": RERANKER_FILE, f"{MINILM}.gguf": files / f"{MINILM}.gguf"}
    daemon = start_served(models, model=RERANKER)
    yield daemon
    stop_served(daemon)


# -- generative yes/no on Gemma ---------------------------------------------------------------


def test_gemma_ranks_the_river_first(gemma: Served) -> None:
    result = gemma.client.rerank(GEMMA, QUERY, DOCUMENTS)
    assert result.method == "generative_yes_no"
    assert result.order[0] == 1, result
    assert sorted(result.order) == [0, 1, 2] and len(result.scores) == 3
    assert all(0.0 <= s <= 1.0 for s in result.scores)
    assert result.scores[1] > max(result.scores[0], result.scores[2])
    usage = result.usage
    assert usage.truncated_tokens == (0, 0, 0)
    # the prompt up to the document is computed once: fewer tokens than three whole prompts
    assert max(usage.input_tokens) < usage.total_tokens < sum(usage.input_tokens)
    top = gemma.client.rerank(GEMMA, QUERY, DOCUMENTS, top_n=1)
    assert top.order == (1,) and len(top.scores) == 3
    # the shared prefix changes nothing: one document alone scores as it does in the list
    alone = gemma.client.rerank(GEMMA, QUERY, [DOCUMENTS[1]])
    assert alone.scores[0] == pytest.approx(result.scores[1], abs=2e-3)


def test_gemma_typed_errors(gemma: Served) -> None:
    client = gemma.client
    with pytest.raises(modeldconn.InvalidArgument) as no_documents:
        client.rerank(GEMMA, QUERY, [])
    assert no_documents.value.metadata["field"] == "documents"
    with pytest.raises(modeldconn.InvalidArgument) as empty_document:
        client.rerank(GEMMA, QUERY, ["a river", ""])
    assert empty_document.value.metadata["field"] == "documents[1]"
    with pytest.raises(modeldconn.InvalidArgument) as empty_query:
        client.rerank(GEMMA, "", DOCUMENTS)
    assert empty_query.value.metadata["field"] == "query"


def test_gemma_async_and_cli(gemma: Served) -> None:
    async def run() -> modeldconn.Reranking:
        async with modeldconn.AsyncClient(data_root=gemma.root) as client:
            return await client.rerank(GEMMA, QUERY, DOCUMENTS)

    assert asyncio.run(run()).order[0] == 1
    done = run_modeld(
        "rerank", GEMMA, QUERY, *DOCUMENTS, "--json", "--data-root", str(gemma.root), timeout=120
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["method"] == "generative_yes_no" and document["order"][0] == 1
    assert len(document["scores"]) == 3


# -- the cross-encoder on the tiny BERT reranker ----------------------------------------------


def _llama_rank_scores(pairs: list[tuple[str, str]]) -> list[float]:
    """llama.cpp's own rank output: each pair formed as llama-server's format_prompt_rerank
    forms it ([BOS] query [EOS] document [EOS] for this vocabulary), one llama_encode per pair
    in a context with LLAMA_POOLING_TYPE_RANK, the score the first pooled value."""
    import llama_cpp as ll

    from modeld.backends.llama._backend import _init_llama_once, weight_params

    _init_llama_once()
    model = ll.llama_model_load_from_file(str(RERANKER_FILE).encode(), weight_params())
    assert model
    vocab = ll.llama_model_get_vocab(model)
    assert ll.llama_vocab_get_add_bos(vocab) and ll.llama_vocab_get_add_eos(vocab)
    assert not ll.llama_vocab_get_add_sep(vocab)

    def tokenize(text: str) -> list[int]:
        raw = text.encode()
        buffer = (ll.llama_token * 512)()
        count = ll.llama_tokenize(vocab, raw, len(raw), buffer, 512, False, False)
        return list(buffer[:count])

    params = ll.llama_context_default_params()
    params.embeddings = True
    params.pooling_type = ll.LLAMA_POOLING_TYPE_RANK
    params.n_ctx = params.n_batch = params.n_ubatch = 512
    params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx: Any = ll.llama_init_from_model(model, params)
    batch = ll.llama_batch_init(512, 0, 1)
    scores = []
    try:
        bos, eos = ll.llama_vocab_bos(vocab), ll.llama_vocab_eos(vocab)
        for query, document in pairs:
            ids = [bos, *tokenize(query), eos, *tokenize(document), eos]
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, 1
            batch.n_tokens = len(ids)
            assert ll.llama_encode(ctx, batch) == 0
            pointer = ll.llama_get_embeddings_seq(ctx, 0)
            scores.append(float(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float))[0]))
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)
        ll.llama_model_free(model)
    return scores


def test_cross_encoder_equals_llama_cpp_rank_output(reranker: Served) -> None:
    facts = reranker.client.describe(RERANKER).facts
    assert facts.tasks == ("rerank",) and facts.pooling == "rank"
    result = reranker.client.rerank(RERANKER, QUERY, DOCUMENTS)
    assert result.method == "cross_encoder"
    expected = _llama_rank_scores([(QUERY, d) for d in DOCUMENTS])
    # modeld runs each pair alone in its llama call, as llama.cpp's reference here does
    assert result.scores == pytest.approx(expected, abs=1e-5)
    ranked = sorted(range(3), key=lambda i: -expected[i])
    assert list(result.order) == ranked
    # [CLS] query [SEP] document [SEP]: usage counts every token of each pair
    assert result.usage.total_tokens == sum(result.usage.input_tokens)


def test_cross_encoder_overflow_and_truncation(reranker: Served) -> None:
    long = "river " * 600
    with pytest.raises(modeldconn.ContextOverflow) as overflow:
        reranker.client.rerank(RERANKER, QUERY, ["a river", long])
    assert overflow.value.metadata["input"] == "1"
    cut = reranker.client.rerank(RERANKER, QUERY, ["a river", long], truncate=True)
    assert cut.usage.input_tokens[1] == 512 and cut.usage.truncated_tokens[0] == 0
    assert cut.usage.truncated_tokens[1] > 0


def test_embedding_only_model_cannot_rerank(reranker: Served) -> None:
    with pytest.raises(modeldconn.CapabilityMismatch) as mismatch:
        reranker.client.rerank(MINILM, QUERY, DOCUMENTS)
    assert mismatch.value.metadata["task"] == "rerank"
    with pytest.raises(modeldconn.CapabilityMismatch):
        reranker.client.embed(RERANKER, ["a river"])
    with pytest.raises(modeldconn.InvalidArgument) as empty:
        reranker.client.rerank(RERANKER, QUERY, [])
    assert empty.value.metadata["field"] == "documents"


def test_cli_rerank_json(reranker: Served) -> None:
    done = run_modeld(
        "rerank", RERANKER, QUERY, *DOCUMENTS, "--json", "--data-root", str(reranker.root)
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert set(document) >= {"scores", "order", "method"}
    assert document["method"] == "cross_encoder" and len(document["scores"]) == 3
