"""Structured output and logprobs on the tiny qwen2 fixture (a byte-level BPE vocabulary, next
to Gemma's SentencePiece one), on each backend; and logprobs compared across the backends."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from daemons import stop_served
from served_models import TINY, require_backend, serve_tiny

import modeldconn
from modeldconn import ResponseFormat

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "kind": {"enum": ["a", "b"]},
        "note": {"type": "string", "maxLength": 8},
    },
    "required": ["id", "kind", "note"],
    "additionalProperties": False,
}


def test_a_schema_and_a_regex_hold_on_a_bpe_vocabulary(client: modeldconn.Client) -> None:
    with client.open_session(TINY) as session:
        for seed in range(8):
            session.ensure_prefix("the cat sat on the")
            out = session.generate(
                response_format=ResponseFormat.from_schema(SCHEMA),
                temperature=1.0,
                seed=seed,
                max_tokens=80,
            )
            assert out.stop_reason in ("grammar_end", "eos"), out
            jsonschema.validate(json.loads(out.text), SCHEMA)
            session.ensure_prefix("the cat sat on the")
            out = session.generate(
                response_format=ResponseFormat(regex=r"[a-z]{2,6}( [a-z]{2,6}){2}"),
                temperature=1.0,
                seed=seed,
                max_tokens=40,
            )
            assert re.fullmatch(r"[a-z]{2,6}( [a-z]{2,6}){2}", out.text), out.text


def test_logprobs_agree_across_backends() -> None:
    """openvino in f32 against llama.cpp on the same GGUF: the same greedy tokens, and each
    position's logprobs close.

    Not to 1e-3, as issue 16 asked: llama.cpp multiplies F16 weights by activations rounded
    to f16 (ggml's vec_dot_f16), openvino in f32 does not, and the logits differ by up to
    ~1e-2 on this random model (measured: sampled tokens' logprobs within 3.6e-3, top 5
    within 1.2e-2). The bounds below are about twice that; against llama.cpp's own logits the
    daemon is exact to 1e-4 (tests/models/test_structured_output.py)."""
    for backend in ("llama", "openvino"):
        require_backend(backend)
    results = {}
    for backend in ("llama", "openvino"):
        served = serve_tiny(backend)
        try:
            with served.client.open_session(TINY) as session:
                session.ensure_prefix("the cat sat on the")
                results[backend] = session.generate(max_tokens=12, logprobs=5)
        finally:
            stop_served(served)
    llama, openvino = results["llama"], results["openvino"]
    assert llama.token_ids == openvino.token_ids
    for a, b in zip(llama.logprobs, openvino.logprobs, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=8e-3)
        top_b = {t.id: t.logprob for t in b.top}
        for t in a.top:
            if t.id in top_b:  # near-ties may order differently within the tolerance
                assert t.logprob == pytest.approx(top_b[t.id], abs=2.5e-2)


def test_a_cancelled_grammar_stream_leaves_nothing_behind(client: modeldconn.Client) -> None:
    """The grammar's state lives and dies with its Decode: after a stream abandoned mid-object,
    the next Decode starts the language afresh (its own output is a whole valid object), and
    the session still decodes freely."""
    fmt = ResponseFormat.from_schema(SCHEMA)
    with client.open_session(TINY) as session:
        session.ensure_prefix("the cat sat on the")
        stream = session.decode(response_format=fmt, temperature=1.0, seed=1, max_tokens=80)
        for _ in range(3):
            next(stream)
        stream.close()  # cancelled mid-object
        out = session.generate(response_format=fmt, temperature=1.0, seed=2, max_tokens=80)
        jsonschema.validate(json.loads(out.text), SCHEMA)
        assert session.generate(max_tokens=4).final.completion_tokens == 4
