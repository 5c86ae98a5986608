"""``POST /v1/embeddings`` on all-MiniLM-L6-v2 through the official openai SDK: the vectors are
the Embed verb's, as floats and as base64."""

from __future__ import annotations

import numpy as np
from daemons import stop_served
from http_clients import openai_client
from served_models import MINILM, serve_minilm


def test_embeddings_create() -> None:
    served = serve_minilm("llama", "--http-listen", "127.0.0.1:0")
    try:
        client = openai_client(served)
        texts = ["The river flows.", "A tax form."]
        floats = client.embeddings.create(model=MINILM, input=texts, encoding_format="float")
        assert [d.index for d in floats.data] == [0, 1]
        vectors = np.asarray([d.embedding for d in floats.data], dtype=np.float32)
        assert vectors.shape == (2, 384)
        expected = served.client.embed(MINILM, texts).vectors
        np.testing.assert_allclose(vectors, np.asarray(expected), atol=1e-6)
        assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
        # the SDK asks for base64 by default and decodes it itself
        packed = client.embeddings.create(model=MINILM, input="The river flows.")
        # one input alone against it in a batch of two: llama.cpp's CPU kernels are not
        # batch-size invariant (the README's Embeddings: within 5e-5)
        np.testing.assert_allclose(np.asarray(packed.data[0].embedding), vectors[0], atol=5e-5)
    finally:
        stop_served(served)
