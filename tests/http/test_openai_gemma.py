"""The OpenAI-compatible HTTP API on Gemma 3 270M, through the official openai SDK: a multi-turn
chat that reuses every earlier turn and equals a cold run, a tool call round trip, and a JSON
schema response."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from daemons import Served, stop_served
from http_clients import openai_client
from served_models import GEMMA, serve_gemma

from modeldconn import Chat

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def cold_gemma() -> Iterator[Served]:
    """A daemon of its own for cold runs: on the HTTP daemon a new session would start from
    the HTTP sessions' KV (prefix sharing), which is exactly not a cold run."""
    daemon = serve_gemma("llama", "--threads", "2")
    yield daemon
    stop_served(daemon)


def _cold(served: Served, messages: list[dict[str, Any]], max_tokens: int) -> str:
    """The same rendered prompt on a fresh session through modeldconn: a cold run."""
    with served.client.open_session(GEMMA) as session:
        prefix = session.ensure_prefix(Chat(messages))
        assert prefix.reused == 0
        return session.generate(max_tokens=max_tokens, temperature=0).text


def test_six_turns_reuse_history_and_equal_cold_runs(gemma: Served, cold_gemma: Served) -> None:
    client = openai_client(gemma)
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "You answer in one short sentence."},
    ]
    questions = [
        "What is the capital of France?",
        "Which river flows through it?",
        "Name a famous museum there.",
        "What is the tallest tower there?",
        "Which language is spoken there?",
        "What is a typical dish there?",
    ]
    previous_prompt = 0
    for turn, question in enumerate(questions):
        history.append({"role": "user", "content": question})
        reply = client.chat.completions.create(
            model=GEMMA,
            messages=history,  # type: ignore[arg-type]
            max_tokens=20,
            temperature=0,
        )
        usage = reply.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        cached = usage.prompt_tokens_details.cached_tokens or 0
        if turn:
            assert cached >= previous_prompt, (turn, cached, previous_prompt)
        previous_prompt = usage.prompt_tokens
        text = reply.choices[0].message.content or ""
        assert text == _cold(cold_gemma, history, 20), turn
        history.append({"role": "assistant", "content": text})


def test_tool_call_round_trip(gemma: Served) -> None:
    client = openai_client(gemma)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=GEMMA,
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=64,
        temperature=0,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert isinstance(arguments.get("city"), str)
    # streamed, the same call arrives as a tool_call delta
    deltas = [
        c.choices[0].delta.tool_calls
        for c in client.chat.completions.create(
            model=GEMMA,
            messages=messages,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=64,
            temperature=0,
            stream=True,
        )
        if c.choices and c.choices[0].delta.tool_calls
    ]
    assert deltas and deltas[0][0].function.name == "get_weather"  # type: ignore[index,union-attr]
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},  # type: ignore[union-attr]
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"})
    second = client.chat.completions.create(
        model=GEMMA,
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=32,
        temperature=0,
    )
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content
    usage = second.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens_details.cached_tokens or 0) > 0


def test_json_schema_response_validates(gemma: Served) -> None:
    client = openai_client(gemma)
    schema = {
        "type": "object",
        # bounded: a small greedy model may otherwise write digits until max_tokens
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "country": {"type": "string", "maxLength": 40},
        },
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Describe the largest city of Japan as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema},
        },
        max_tokens=160,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content or ""), schema)
    assert choice.logprobs is not None and choice.logprobs.content
    assert all(len(entry.top_logprobs) == 2 for entry in choice.logprobs.content)


def test_json_object_response(gemma: Served) -> None:
    reply = openai_client(gemma).chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Give me a JSON object with a greeting."}],
        response_format={"type": "json_object"},
        max_tokens=128,
        temperature=0,
    )
    choice = reply.choices[0]
    text = choice.message.content or ""
    assert text.lstrip().startswith("{"), text
    if choice.finish_reason == "stop":  # a greedy 270M model may also fill the budget
        assert isinstance(json.loads(text), dict)
