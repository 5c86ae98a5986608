"""Issue 16 on the real default model, Gemma 3 270M, on each backend: response formats,
tool calls, thinking, logprobs and logit bias, with real tokens."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator

import jsonschema
import pytest
from daemons import Served, stop_served
from served_models import BACKENDS, GEMMA, serve_gemma

from modeldconn import Chat, InvalidArgument, ResponseFormat

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 2},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}
ISO_DATE = r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
TOOLS = [
    {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            # bounded: a small model may otherwise write digits until max_tokens
            "properties": {
                "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
]
SAMPLES = 50


@pytest.fixture(scope="module", params=BACKENDS)
def gemma(request: pytest.FixtureRequest) -> Iterator[Served]:
    daemon = serve_gemma(request.param)
    yield daemon
    stop_served(daemon)


@pytest.mark.timeout(900)  # 50 samples of ~60 tokens each
def test_json_schema_samples_all_validate(gemma: Served) -> None:
    fmt = ResponseFormat.from_schema(PERSON)
    prompt = [{"role": "user", "content": "Describe a user account as JSON."}]
    with gemma.client.open_session(GEMMA) as session:
        for seed in range(SAMPLES):
            session.ensure_prefix(prompt)  # each sample from the same prompt, warm
            out = session.generate(response_format=fmt, temperature=1.0, seed=seed, max_tokens=160)
            assert out.stop_reason in ("grammar_end", "eos"), (seed, out.text)
            jsonschema.validate(json.loads(out.text), PERSON)


def test_regex_samples_all_match(gemma: Served) -> None:
    with gemma.client.open_session(GEMMA) as session:
        for seed in range(SAMPLES):
            session.ensure_prefix("The treaty was signed on")
            out = session.generate(
                response_format=ResponseFormat(regex=ISO_DATE),
                temperature=1.0,
                seed=seed,
                max_tokens=20,
            )
            assert re.fullmatch(ISO_DATE, out.text), (seed, out.text)
            assert out.stop_reason == "grammar_end"


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        (ResponseFormat(json_schema='{"type": "object", '), "config.response_format.json_schema"),
        (ResponseFormat(json_schema='{"type": "nonsense"}'), "config.response_format.json_schema"),
        (ResponseFormat(json_schema="[1, 2]"), "config.response_format.json_schema"),
        (ResponseFormat(regex="a(b"), "config.response_format.regex"),
        (ResponseFormat(lark="start: foo ("), "config.response_format.lark"),
        (ResponseFormat(gbnf="root ::= ("), "config.response_format.gbnf"),
    ],
)
def test_malformed_formats_are_typed_and_lose_nothing(
    gemma: Served, fmt: ResponseFormat, field: str
) -> None:
    with gemma.client.open_session(GEMMA) as session:
        session.ensure_prefix("Once upon a time")
        before = session.generate(max_tokens=6)
        session.ensure_prefix("Once upon a time")
        with pytest.raises(InvalidArgument) as caught:
            session.generate(response_format=fmt, max_tokens=6)
        assert caught.value.metadata.get("field") == field, caught.value
        # refused before the KV was touched: the same greedy answer as before
        assert session.generate(max_tokens=6).token_ids == before.token_ids


def test_mask_does_not_perturb_allowed_tokens(gemma: Served) -> None:
    """Greedy under a grammar equals greedy without it when the free output satisfies it."""
    prompt = "Counting: 1, 2, 3, 4, 5,"
    with gemma.client.open_session(GEMMA) as session:
        session.ensure_prefix(prompt)
        free = session.generate(max_tokens=16)
        session.ensure_prefix(prompt)
        pattern = r"( [0-9]+,)*( [0-9]+)?"
        assert re.fullmatch(pattern, free.text), free.text  # the premise of the test
        bound = session.generate(response_format=ResponseFormat(regex=pattern), max_tokens=16)
    assert bound.token_ids == free.token_ids and bound.text == free.text


def test_warm_equals_cold_under_a_grammar(gemma: Served) -> None:
    fmt = ResponseFormat.from_schema(PERSON)
    prompt = [{"role": "user", "content": "Describe a user account as JSON."}]
    with gemma.client.open_session(GEMMA) as warm:
        warm.ensure_prefix(prompt)
        warm.generate(max_tokens=8)
        warm.ensure_prefix(prompt)
        warm_out = warm.generate(response_format=fmt, max_tokens=200)
    with gemma.client.open_session(GEMMA) as cold:
        cold.ensure_prefix(prompt)
        cold_out = cold.generate(response_format=fmt, max_tokens=200)
    assert warm_out.token_ids == cold_out.token_ids
    jsonschema.validate(json.loads(cold_out.text), PERSON)


def _schema(name: str) -> dict[str, object]:
    tool = next(t for t in TOOLS if t["name"] == name)
    parameters = tool["parameters"]
    assert isinstance(parameters, dict)
    return parameters


def test_required_tool_call_streams_typed_and_validates(gemma: Served) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
    with gemma.client.open_session(GEMMA) as session:
        result = session.ensure_prefix(Chat(question, tools=TOOLS))
        assert result.rendering == "fallback"  # Gemma's template renders no tools
        chunks = list(session.decode(tools=TOOLS, tool_choice="required", max_tokens=120))
    calls = [c for chunk in chunks for c in chunk.tool_calls]
    final = chunks[-1].final
    assert final is not None and final.stop_reason == "tool_calls"
    assert calls and calls[0].index == 0 and calls[0].id.startswith("call_")
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), _schema(call.name))
    # the call is typed, never text
    assert "<tool_call>" not in "".join(chunk.text for chunk in chunks)


def test_named_tool_and_the_result_turn(gemma: Served) -> None:
    history: list[dict[str, object]] = [{"role": "user", "content": "What is 2 plus 3?"}]
    with gemma.client.open_session(GEMMA) as session:
        session.ensure_prefix(Chat(history, tools=TOOLS))
        out = session.generate(tools=TOOLS, tool_choice="add", max_tokens=60)
        assert [c.name for c in out.tool_calls] == ["add"] and out.stop_reason == "tool_calls"
        call = out.tool_calls[0]
        jsonschema.validate(json.loads(call.arguments), _schema("add"))
        history += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call.id, "name": "add", "content": "5"},
        ]
        result = session.ensure_prefix(Chat(history, tools=TOOLS))
        assert result.reused > 0  # the turn so far stays warm
        answer = session.generate(max_tokens=12)
    assert answer.final.completion_tokens > 0 and answer.text.strip()


def test_thinking_is_split_and_its_budget_honoured(gemma: Served) -> None:
    lark = 'start: "<think>" /[a-z ]{1,60}/ "</think>" /[A-Za-z ]{1,30}/'
    with gemma.client.open_session(GEMMA) as session:
        session.ensure_prefix("Answer after thinking:")
        out = session.generate(response_format=ResponseFormat(lark=lark), max_tokens=100)
        assert out.thinking and out.text and "<think>" not in out.text + out.thinking
        assert 0 < out.final.thinking_tokens < out.final.completion_tokens
        session.ensure_prefix("Answer after thinking:")
        budget = 3
        short = session.generate(
            response_format=ResponseFormat(lark=lark), thinking_budget=budget, max_tokens=100
        )
    end_tokens = len(gemma.client.tokenize(GEMMA, "</think>"))
    assert short.final.thinking_tokens <= budget + end_tokens
    assert short.text and "</think>" not in short.text


def test_logprobs_are_the_log_softmax_of_the_logits(gemma: Served) -> None:
    with gemma.client.open_session(GEMMA) as session:
        session.ensure_prefix("The capital of France is")
        out = session.generate(max_tokens=4, logprobs=5)
    assert len(out.logprobs) == len(out.token_ids)
    for scored, token in zip(out.logprobs, out.token_ids, strict=True):
        assert scored.id == token and len(scored.top) == 5
        # greedy: the sampled token is the most likely one
        assert scored.top[0].id == token and math.isclose(scored.top[0].logprob, scored.logprob)
        assert all(a.logprob >= b.logprob for a, b in itertools.pairwise(scored.top))
        assert sum(math.exp(t.logprob) for t in scored.top) <= 1.0 + 1e-5


def test_logit_bias_bans_the_greedy_token(gemma: Served) -> None:
    with gemma.client.open_session(GEMMA) as session:
        session.ensure_prefix("The capital of France is")
        free = session.generate(max_tokens=1)
        session.ensure_prefix("The capital of France is")
        banned = session.generate(max_tokens=1, logit_bias={free.token_ids[0]: -math.inf})
    assert banned.token_ids[0] != free.token_ids[0]


def test_logprobs_equal_llama_cpps_own_logits(gemma: Served) -> None:
    """On llama: the log-softmax of llama.cpp's own logits, computed in this process through
    llama.cpp's C API, for the same positions (the prompt in one batch, then one token at a
    time, as the daemon computes them)."""
    if gemma.backend != "llama":
        pytest.skip("the reference is llama.cpp's own logits")
    ll = pytest.importorskip("llama_cpp")
    import numpy as np
    from served_models import gemma_gguf

    from modeld.backends.llama._backend import weight_params

    prompt = "The capital of France is"
    with gemma.client.open_session(GEMMA) as session:
        session.ensure_prefix(prompt)
        out = session.generate(max_tokens=6, logprobs=3)
        tape = session.tokenize(prompt, add_special=True)
    ll.llama_backend_init()
    # the daemon's weight placement (no AMX-repacked buffers this process may not execute)
    model = ll.llama_model_load_from_file(str(gemma_gguf()).encode(), weight_params())
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_threads = 256, 256, 2
    ctx = ll.llama_init_from_model(model, params)
    vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))

    def feed(tokens: list[int]) -> np.ndarray:
        array = (ll.llama_token * len(tokens))(*tokens)
        assert ll.llama_decode(ctx, ll.llama_batch_get_one(array, len(tokens))) == 0
        row = ll.llama_get_logits_ith(ctx, -1)
        logits = np.ctypeslib.as_array(row, shape=(vocab,)).astype(np.float64)
        peak = logits.max()
        result: np.ndarray = logits - (peak + np.log(np.exp(logits - peak).sum()))
        return result

    try:
        expected = feed(tape)
        for token, scored in zip(out.token_ids, out.logprobs, strict=True):
            assert abs(scored.logprob - expected[token]) < 1e-4, (token, scored.logprob)
            for top in scored.top:
                assert abs(top.logprob - expected[top.id]) < 1e-4
            expected = feed([token])
    finally:
        ll.llama_free(ctx)
        ll.llama_model_free(model)


def test_auto_constrains_a_call_once_its_marker_appears(gemma: Served) -> None:
    """Under auto the model is free until it writes a call's marker; from there the call is
    held to the tools' schemas, and the Decode ends with it (parallel_tool_calls off). A
    few-shot prompt makes the small model write the marker itself."""
    shots = "".join(
        f'Q: add {a} and {b}\nA: <tool_call>{{"name": "add", "arguments": {{"a": {a}, "b": {b}}}}}'
        "</tool_call>\n"
        for a, b in ((1, 2), (4, 9), (12, 30))
    )
    with gemma.client.open_session(GEMMA) as session:
        session.ensure_prefix(shots + "Q: add 5 and 7\nA:")
        out = session.generate(tools=TOOLS, tool_call_format="generic", max_tokens=60)
    assert out.stop_reason == "tool_calls", out
    assert len(out.tool_calls) == 1 and "<tool_call>" not in out.text
    call = out.tool_calls[0]
    assert call.name == "add"
    jsonschema.validate(json.loads(call.arguments), _schema("add"))
