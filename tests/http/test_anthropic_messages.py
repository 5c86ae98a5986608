"""Anthropic's Messages API on the daemon's HTTP listener, through the official anthropic SDK:
streamed and not, cache_control breakpoints and the cache usage fields, count_tokens and the
error shape on the tiny qwen2 fixture; a tool_use round trip on Gemma 3 270M."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest
from daemons import Served
from http_clients import http_url
from served_models import GEMMA, TINY

#: a long, stable system prompt (~600 tokens on the tiny fixture's tokenizer)
LONG_SYSTEM = "You are a careful assistant who follows the house rules exactly. " * 40

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
    },
}


def anthropic_client(served: Served, api_key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=http_url(served), api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def client(tiny: Served) -> Iterator[anthropic.Anthropic]:
    with anthropic_client(tiny) as opened:
        yield opened


def _post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _total(usage: Any) -> int:
    return int(
        usage.input_tokens
        + (usage.cache_creation_input_tokens or 0)
        + (usage.cache_read_input_tokens or 0)
    )


def test_streamed_text_equals_the_message(tiny: Served, client: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": TINY,
        "max_tokens": 8,
        # greedy, so both runs write the same tokens (the SDK no longer has a temperature
        # argument; an absent one is modeld's default, greedy, and this says it anyway)
        "extra_body": {"temperature": 0},
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Tell me a story about a fox."}],
    }
    whole = client.messages.create(**request)
    assert whole.type == "message" and whole.role == "assistant"
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 8
    assert [b.type for b in whole.content] == ["text"]
    text = whole.content[0].text  # type: ignore[union-attr]
    with client.messages.stream(**request) as stream:
        events = list(stream)
        streamed = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "message_delta" in kinds
    collected = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert collected == text
    assert streamed.stop_reason == "max_tokens" and streamed.usage.output_tokens == 8
    assert _total(streamed.usage) == _total(whole.usage)


def test_stop_sequence(tiny: Served, client: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": TINY,
        "max_tokens": 12,
        "messages": [{"role": "user", "content": "Count: one two three"}],
    }
    text = client.messages.create(**request).content[0].text  # type: ignore[union-attr]
    # stop at a piece of what greedy decoding writes anyway
    words = text.split()
    if len(words) < 3:
        pytest.skip(f"the fixture wrote too little to cut: {text!r}")
    cut = words[2]
    stopped = client.messages.create(**request, stop_sequences=[cut])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == cut


def test_cache_control_breakpoint_is_read_on_the_next_call(
    tiny: Served, client: anthropic.Anthropic
) -> None:
    system = [
        {"type": "text", "text": "Breakpoint test. " + LONG_SYSTEM},
        {"type": "text", "text": "Rules end here.", "cache_control": {"type": "ephemeral"}},
    ]

    def ask(question: str) -> Any:
        return client.messages.with_raw_response.create(
            model=TINY,
            max_tokens=2,
            system=system,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": question}],
        )

    first_raw = ask("Zebras?")
    first = first_raw.parse()
    prefix = first.usage.cache_creation_input_tokens + first.usage.cache_read_input_tokens
    assert prefix > 300  # the whole marked system prompt
    assert first.usage.input_tokens > 0  # the user turn, after the breakpoint
    second_raw = ask("Penguins?")
    second = second_raw.parse()
    usage = second.usage
    # the marked prefix is read, nothing of it computed again
    assert usage.cache_creation_input_tokens == 0
    assert usage.cache_read_input_tokens >= prefix
    assert usage.cache_read_input_tokens == int(second_raw.headers["x-modeld-reused-tokens"])
    # modeld reuses past the breakpoint up to where the prompts part (the chat markup before
    # the question: a few tokens), never into the question
    assert usage.cache_read_input_tokens - prefix < 16
    assert usage.input_tokens > 0
    counted = client.messages.count_tokens(
        model=TINY,
        system=system,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "Penguins?"}],
    )
    assert _total(usage) == counted.input_tokens
    assert second_raw.headers["x-modeld-divergence"] != ""
    # without a breakpoint nothing is "created": the reuse is still reported
    third = client.messages.create(
        model=TINY,
        max_tokens=2,
        system="Breakpoint test. " + LONG_SYSTEM + "\n\nRules end here.",
        messages=[{"role": "user", "content": "Owls?"}],
    )
    assert third.usage.cache_creation_input_tokens == 0
    assert third.usage.cache_read_input_tokens >= prefix - 2


def test_count_tokens_equals_the_message_input(tiny: Served, client: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": TINY,
        "system": "Count test: a system prompt of its own.",
        "messages": [
            {"role": "user", "content": "First question?"},
            {"role": "assistant", "content": [{"type": "text", "text": "First answer."}]},
            {"role": "user", "content": [{"type": "text", "text": "Second question?"}]},
        ],
    }
    counted = client.messages.count_tokens(**request)
    reply = client.messages.create(max_tokens=1, **request)
    assert counted.input_tokens == _total(reply.usage) > 10


def test_errors_in_anthropic_shape(tiny: Served, client: anthropic.Anthropic) -> None:
    url = http_url(tiny)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(
            model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as overflow:
        client.messages.create(
            model=TINY, max_tokens=1, messages=[{"role": "user", "content": "word " * 5000}]
        )
    assert overflow.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "2048" in overflow.value.message
    # not JSON, a missing max_tokens, an unknown block type: 400 naming the field
    status, body = _post(f"{url}/v1/messages", b'{"model": "tiny", "messages": [')
    assert status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    status, body = _post(
        f"{url}/v1/messages",
        json.dumps({"model": TINY, "messages": [{"role": "user", "content": "x"}]}).encode(),
    )
    assert status == 400 and body["error"]["message"].startswith("max_tokens"), body
    status, body = _post(
        f"{url}/v1/messages",
        json.dumps(
            {
                "model": TINY,
                "max_tokens": 4,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
            }
        ).encode(),
    )
    assert status == 400 and body["error"]["message"].startswith("messages[0].content"), body
    status, body = _post(
        f"{url}/v1/messages",
        json.dumps(
            {
                "model": TINY,
                "max_tokens": 4,
                "top_p": 7,
                "messages": [{"role": "user", "content": "x"}],
            }
        ).encode(),
    )
    assert status == 400 and body["error"]["message"].startswith("top_p"), body
    status, body = _post(f"{url}/v1/messages/count_tokens", b'{"model": "tiny"}')
    assert status == 400 and body["error"]["message"].startswith("messages"), body


# -- Gemma: a tool_use round trip needs a model that reads the tool result -----------------------


def test_tool_use_round_trip(gemma: Served) -> None:
    with anthropic_client(gemma) as client:
        _tool_use_round_trip(client)


def _tool_use_round_trip(client: anthropic.Anthropic) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(
        model=GEMMA,
        max_tokens=64,
        extra_body={"temperature": 0},
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    # streamed, the same call arrives as a tool_use block with an input_json_delta
    with client.messages.stream(
        model=GEMMA,
        max_tokens=64,
        extra_body={"temperature": 0},
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content if b.type == "tool_use"] == ["tool_use"]
    assert streamed.content[-1].input == uses[0].input  # type: ignore[union-attr]
    messages.append({"role": "assistant", "content": [u.model_dump() for u in uses]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 C and sunny"}
            ],
        }
    )
    second = client.messages.create(
        model=GEMMA,
        max_tokens=32,
        extra_body={"temperature": 0},
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "none"},
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    text = "".join(b.text for b in second.content if b.type == "text")
    assert text.strip()
    # the turn continued the first one's session: its prompt was reused
    assert second.usage.cache_read_input_tokens > 0
