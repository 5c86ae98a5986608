"""Issue 16 on the client: response formats, tools, thinking, logprobs and logit bias, to the
wire and back, without a daemon."""

from __future__ import annotations

import json
import math

import pytest

import modeldconn
from modeldconn import _convert
from modeldconn import _requests as rq
from modeldconn._client import Collector
from modeldconn._pb import modeld_pb2 as pb

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = modeldconn.ToolDefinition("get_weather", "Weather in a city", SCHEMA)

# --- the types ---------------------------------------------------------------------------------


def test_response_format_takes_a_schema_as_a_mapping_or_text() -> None:
    as_dict = modeldconn.ResponseFormat.from_schema(SCHEMA)
    assert as_dict.json_schema == json.dumps(SCHEMA) and as_dict.kind == "json_schema"
    assert as_dict == modeldconn.ResponseFormat(json_schema=json.dumps(SCHEMA))
    hash(as_dict)  # frozen, and hashable once the mapping is text
    assert modeldconn.ResponseFormat.any_json_object().kind == "json_object"
    assert modeldconn.ResponseFormat.from_regex(r"\d{4}").regex == r"\d{4}"
    assert modeldconn.ResponseFormat.from_lark("start: 'a'").lark == "start: 'a'"
    assert modeldconn.ResponseFormat.from_gbnf('root ::= "a"').gbnf == 'root ::= "a"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"regex": "a+"}, modeldconn.ResponseFormat(regex="a+")),
        ({"type": "json_object"}, modeldconn.ResponseFormat(json_object=True)),
        (
            {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
            modeldconn.ResponseFormat(json_schema=SCHEMA),
        ),
        ({"json_schema": SCHEMA}, modeldconn.ResponseFormat(json_schema=SCHEMA)),
    ],
)
def test_response_format_of_mappings(value: dict[str, object], expected: object) -> None:
    assert modeldconn.ResponseFormat.of(value) == expected


@pytest.mark.parametrize(
    "build",
    [
        lambda: modeldconn.ResponseFormat(),
        lambda: modeldconn.ResponseFormat(regex="a", lark="start: 'a'"),
        lambda: modeldconn.ResponseFormat(json_object=True, regex="a"),
        lambda: modeldconn.ResponseFormat.of({"regexp": "a"}),
        lambda: modeldconn.ResponseFormat.of({"type": "text"}),
        lambda: modeldconn.ResponseFormat(json_schema={"bad": {1, 2}}),
    ],
)
def test_a_response_format_needs_exactly_one_kind(build: object) -> None:
    with pytest.raises(modeldconn.InvalidArgument) as caught:
        build()  # type: ignore[operator]
    assert caught.value.metadata["field"].startswith("response_format")


def test_tool_definitions_and_calls_from_openai_shapes() -> None:
    openai = {"type": "function", "function": {"name": "get_weather", **_rest(WEATHER)}}
    assert modeldconn.ToolDefinition.of(openai) == WEATHER
    assert modeldconn.ToolDefinition.of({"name": "get_weather", **_rest(WEATHER)}) == WEATHER
    assert modeldconn.ToolDefinition("f").parameters == "{}"
    call = modeldconn.ToolCall.of(
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
        index=2,
    )
    assert call == modeldconn.ToolCall("c1", "f", '{"x": 1}', 2)
    assert call.args == {"x": 1}
    flat = modeldconn.ToolCall.of({"name": "f", "arguments": '{"y": 2}', "index": 1})
    assert (flat.id, flat.index, flat.args) == ("", 1, {"y": 2})
    with pytest.raises(modeldconn.InvalidArgument):
        modeldconn.ToolDefinition.of({"description": "no name"})
    with pytest.raises(modeldconn.InvalidArgument):
        modeldconn.ToolCall.of({"function": {"arguments": "{}"}})


def _rest(tool: modeldconn.ToolDefinition) -> dict[str, object]:
    return {"description": tool.description, "parameters": json.loads(str(tool.parameters))}


def test_decode_options_freeze_the_new_fields() -> None:
    options = modeldconn.DecodeOptions(
        response_format={"type": "json_object"},  # type: ignore[arg-type]
        tools=[{"name": "get_weather", **_rest(WEATHER)}],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},  # type: ignore[arg-type]
        logit_bias={9: 1.5, 2: -math.inf},  # type: ignore[arg-type]
        logprobs=3,
    )
    assert options.response_format == modeldconn.ResponseFormat(json_object=True)
    assert options.tools == (WEATHER,)
    assert options.tool_choice == "get_weather"
    assert options.logit_bias == ((2, -math.inf), (9, 1.5))  # sorted pairs
    hash(options)
    assert modeldconn.DecodeOptions(
        logit_bias=[(9, 1.5), (2, -math.inf)]
    ) == modeldconn.DecodeOptions(
        logit_bias={2: -math.inf, 9: 1.5}  # type: ignore[arg-type]
    )
    with pytest.raises(modeldconn.InvalidArgument, match="tools"):
        modeldconn.DecodeOptions(tools=WEATHER)  # type: ignore[arg-type]
    with pytest.raises(modeldconn.InvalidArgument, match="logit_bias"):
        modeldconn.DecodeOptions(logit_bias=[1, 2])  # type: ignore[list-item]


# --- to the wire -------------------------------------------------------------------------------


def test_chat_with_tool_calls_in_both_shapes_and_tool_results() -> None:
    chat = modeldconn.Chat(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    },
                    modeldconn.ToolCall("c2", "get_weather", '{"city": "Lyon"}', 1),
                ],
                "thinking": "Two calls.",
            },
            {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "18 C"},
            {"role": "assistant", "tool_calls": [{"name": "get_weather", "arguments": "{}"}]},
        ],
        tools=[WEATHER],
        enable_thinking=False,
    )
    wire = _convert.input_to_pb(chat).chat
    assert wire.HasField("enable_thinking") and wire.enable_thinking is False
    assert [(t.name, json.loads(t.parameters)) for t in wire.tools] == [("get_weather", SCHEMA)]
    user, assistant, tool, bare = wire.messages
    assert (user.role, user.content, list(user.tool_calls)) == ("user", "Weather in Paris?", [])
    assert assistant.content == "" and assistant.thinking == "Two calls."
    assert [(c.id, c.name, json.loads(c.arguments), c.index) for c in assistant.tool_calls] == [
        ("c1", "get_weather", {"city": "Paris"}, 0),
        ("c2", "get_weather", {"city": "Lyon"}, 1),
    ]
    assert (tool.role, tool.tool_call_id, tool.name, tool.content) == (
        "tool",
        "c1",
        "get_weather",
        "18 C",
    )
    assert bare.content == "" and bare.tool_calls[0].name == "get_weather"
    plain = _convert.input_to_pb([{"role": "user", "content": "hi"}]).chat
    assert not plain.HasField("enable_thinking") and not plain.tools


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"content": "no role"}, "messages[0].role"),
        ({"role": "user", "content": ["parts"]}, "messages[0].content"),
        ({"role": "tool", "tool_call_id": 7}, "messages[0].tool_call_id"),
        (
            {"role": "assistant", "tool_calls": [{"name": "f", "arguments": "\ud800"}]},
            "messages[0].tool_calls[0].arguments",
        ),
        ({"role": "assistant", "tool_calls": [{"arguments": "{}"}]}, "messages[0].tool_calls[0]"),
        ({"role": "assistant", "tool_calls": {"name": "f"}}, "messages[0].tool_calls"),
    ],
)
def test_bad_chat_messages_are_named(message: dict[str, object], field: str) -> None:
    with pytest.raises(modeldconn.InvalidArgument) as caught:
        _convert.input_to_pb([message])
    assert caught.value.metadata["field"] == field


def test_decode_config_carries_format_tools_and_bias() -> None:
    options = modeldconn.DecodeOptions(
        response_format=modeldconn.ResponseFormat.from_schema(SCHEMA),
        logit_bias={5: -math.inf},  # type: ignore[arg-type]
        thinking_budget=0,
        logprobs=0,
        reasoning_format="none",
    )
    config = _convert.decode_config_to_pb(options)
    assert config.response_format.WhichOneof("kind") == "json_schema"
    assert json.loads(config.response_format.json_schema) == SCHEMA
    assert dict(config.logit_bias) == {5: -math.inf}
    assert config.HasField("thinking_budget") and config.thinking_budget == 0
    assert config.HasField("logprobs") and config.logprobs == 0
    assert config.reasoning_format == "none"
    assert _convert.decode_options_from_pb(config) == options
    any_object = _convert.decode_config_to_pb(
        modeldconn.DecodeOptions(response_format=modeldconn.ResponseFormat(json_object=True))
    )
    assert any_object.response_format.WhichOneof("kind") == "json_object"
    tools = _convert.decode_config_to_pb(
        modeldconn.DecodeOptions(tools=[WEATHER], tool_choice="required")
    )
    assert [t.name for t in tools.tools] == ["get_weather"] and tools.tool_choice == "required"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"logit_bias": {2**40: 1.0}}, "logit_bias"),
        ({"logit_bias": {"7": 1.0}}, "logit_bias"),
        ({"logit_bias": {7: "up"}}, "logit_bias"),
        ({"logit_bias": {True: 1.0}}, "logit_bias"),
        ({"logprobs": -1}, "logprobs"),
        ({"thinking_budget": -5}, "thinking_budget"),
        ({"tool_choice": 3}, "tool_choice"),
        ({"response_format": {"regex": "\ud800"}}, "response_format.regex"),
        ({"tools": [{"name": "f", "description": "\udfff"}]}, "tools[0].description"),
    ],
)
def test_bad_new_options_are_refused_named(fields: dict[str, object], field: str) -> None:
    with pytest.raises(modeldconn.InvalidArgument) as caught:
        _convert.decode_config_to_pb(modeldconn.DecodeOptions(**fields))  # type: ignore[arg-type]
    assert caught.value.metadata["field"] == field


def test_decode_puts_the_tools_on_a_chat_suffix_and_back() -> None:
    message = {"role": "user", "content": "Weather in Paris?"}
    call = rq.decode("i/s", modeldconn.DecodeOptions(tools=[WEATHER]), [message])
    request = call.request
    assert isinstance(request, pb.DecodeRequest)
    assert [t.name for t in request.suffix.chat.tools] == ["get_weather"]
    assert [t.name for t in request.config.tools] == ["get_weather"]
    call = rq.decode("i/s", modeldconn.DecodeOptions(), modeldconn.Chat([message], tools=[WEATHER]))
    assert [t.name for t in call.request.config.tools] == ["get_weather"]  # type: ignore[attr-defined]
    other = modeldconn.ToolDefinition("other")
    call = rq.decode(
        "i/s", modeldconn.DecodeOptions(tools=[other]), modeldconn.Chat([message], tools=[WEATHER])
    )
    request = call.request
    assert isinstance(request, pb.DecodeRequest)  # both given: each kept as it is
    assert [t.name for t in request.suffix.chat.tools] == ["get_weather"]
    assert [t.name for t in request.config.tools] == ["other"]
    text = rq.decode("i/s", modeldconn.DecodeOptions(tools=[WEATHER]), "plain text").request
    assert isinstance(text, pb.DecodeRequest) and text.suffix.text == "plain text"


# --- from the wire -----------------------------------------------------------------------------


def _chunks() -> list[pb.DecodeChunk]:
    first = pb.DecodeChunk(thinking="Hmm. ", token_ids=[10, 11])
    for token, piece in ((10, b"Hm"), (11, b"m. ")):
        logprob = first.logprobs.add(id=token, logprob=-0.25, piece=piece)
        logprob.top.add(id=token, logprob=-0.25, piece=piece)
        logprob.top.add(id=99, logprob=-2.0, piece=b"\xe2\x82")  # half a character
    second = pb.DecodeChunk(text="Calling.", token_ids=[12])
    third = pb.DecodeChunk(token_ids=[13, 14])
    third.tool_calls.add(id="call_1", name="get_weather", arguments='{"city": "Paris"}', index=0)
    third.final.stop_reason = "tool_calls"
    third.final.usage.prompt_tokens = 40
    third.final.usage.completion_tokens = 5
    third.final.usage.thinking_tokens = 2
    return [first, second, third]


def test_chunks_carry_thinking_tool_calls_and_logprobs() -> None:
    first, second, third = (_convert.decode_chunk_from_pb(m) for m in _chunks())
    assert first.thinking == "Hmm. " and first.text == ""
    assert first.logprobs[0] == modeldconn.TokenLogprob(
        10,
        -0.25,
        b"Hm",
        (modeldconn.TopLogprob(10, -0.25, b"Hm"), modeldconn.TopLogprob(99, -2.0, b"\xe2\x82")),
    )
    assert first.logprobs[0].top[1].text == "\ufffd"
    assert second.text == "Calling." and second.tool_calls == () and second.logprobs == ()
    assert third.tool_calls == (
        modeldconn.ToolCall("call_1", "get_weather", '{"city": "Paris"}', 0),
    )
    assert third.final is not None and third.final.stop_reason == "tool_calls"
    assert third.final.thinking_tokens == 2 and third.final.completion_tokens == 5


def test_a_completion_collects_every_channel() -> None:
    collector = Collector()
    for message in _chunks():
        collector.add(_convert.decode_chunk_from_pb(message))
    completion = collector.completion()
    assert completion.text == "Calling." and completion.thinking == "Hmm. "
    assert completion.token_ids == (10, 11, 12, 13, 14)
    assert [c.args for c in completion.tool_calls] == [{"city": "Paris"}]
    assert [t.id for t in completion.logprobs] == [10, 11]
    assert completion.stop_reason == "tool_calls"


def test_capabilities_read_by_name() -> None:
    reply = pb.OpenSessionResponse(handle="i/s")
    reply.capabilities.grammar = True
    reply.capabilities.tools = True
    reply.capabilities.logprobs = True
    caps = _convert.session_info_from_pb(reply).capabilities
    assert (caps.grammar, caps.tools, caps.thinking, caps.logprobs, caps.logit_bias) == (
        True,
        True,
        False,
        True,
        False,
    )
