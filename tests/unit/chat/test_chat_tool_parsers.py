"""The tool-call parsers: each format, streamed whole and a character at a time (same result)."""

from __future__ import annotations

import json
import re

import pytest

from modeld.chat import FORMATS, ToolCallParser, ToolDefinition, detect_format
from modeld.chat._tool_formats import ParsedDelta

TOOLS = (ToolDefinition("get_weather", "", '{"type": "object"}'),)


def _run(fmt: str, text: str, *, step: int) -> tuple[str, list[tuple[str, str, int]], bool]:
    parser = ToolCallParser(fmt, TOOLS)
    deltas: list[ParsedDelta] = []
    seen_in_call = False
    for at in range(0, len(text), step):
        deltas.append(parser.feed(text[at : at + step]))
        seen_in_call |= parser.in_call
    deltas.append(parser.finish())
    calls = [c for d in deltas for c in d.calls]
    for call in calls:
        assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    return (
        "".join(d.text for d in deltas),
        [(c.name, c.arguments, c.index) for c in calls],
        seen_in_call or parser.marker_seen,
    )


def _both(fmt: str, text: str) -> tuple[str, list[tuple[str, str, int]], bool]:
    whole = _run(fmt, text, step=len(text) or 1)
    assert _run(fmt, text, step=1) == whole
    assert _run(fmt, text, step=3) == whole
    return whole


CASES = [
    # (format, output, text, calls)
    (
        "hermes",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n'
        '</tool_call>\n<tool_call>{"name": "x", "arguments": {}}</tool_call>\n',
        "Let me check.\n",
        [("get_weather", '{"city":"Zürich"}', 0), ("x", "{}", 1)],
    ),
    (
        "generic",
        '<tool_call>{"name": "get_weather", "arguments": {"a": [1, "}"]}}</tool_call>',
        "",
        [("get_weather", '{"a":[1,"}"]}', 0)],
    ),
    ("hermes", "no calls, a < sign and <tool", "no calls, a < sign and <tool", []),
    (
        "hermes",
        '<tool_call>{"name": "x", "arguments": {"a": 1}',  # unfinished: text at the end
        '<tool_call>{"name": "x", "arguments": {"a": 1}',
        [],
    ),
    (
        "hermes",
        "<tool_call>not json</tool_call> after",
        "<tool_call>not json</tool_call> after",
        [],
    ),
    (
        "llama3",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "x", "arguments": {}}',
        "",
        [("get_weather", '{"city":"Paris"}', 0), ("x", "{}", 1)],
    ),
    (
        "llama3",
        '  {"name": "get_weather", "parameters": {"q": "a\\"}b"}}\n{"name": "y", "parameters": {}}',
        "",
        [("get_weather", '{"q":"a\\"}b"}', 0), ("y", "{}", 1)],
    ),
    ("llama3", 'The answer is {"name": 1}', 'The answer is {"name": 1}', []),
    ("llama3", '{"answer": 42}', '{"answer": 42}', []),
    (
        "mistral",
        'Sure.[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Rome"}}, '
        '{"name": "x", "arguments": {"l": [1, 2]}}]',
        "Sure.",
        [("get_weather", '{"city":"Rome"}', 0), ("x", '{"l":[1,2]}', 1)],
    ),
    ("mistral", "[TOOL_CALLS] nope", "[TOOL_CALLS] nope", []),
    ("mistral", "[TOOL_CALL", "[TOOL_CALL", []),
]


@pytest.mark.parametrize(("fmt", "output", "text", "calls"), CASES)
def test_parses_streamed_or_whole(
    fmt: str, output: str, text: str, calls: list[tuple[str, str, int]]
) -> None:
    got_text, got_calls, _ = _both(fmt, output)
    assert got_text == text
    assert got_calls == calls
    for _, arguments, _ in got_calls:
        json.loads(arguments)


def test_text_is_not_held_longer_than_a_marker_could_be() -> None:
    parser = ToolCallParser("hermes")
    assert parser.feed("Hello <to").text == "Hello "
    assert parser.feed("ol").text == ""
    assert parser.feed("box>").text == "<toolbox>"
    assert not parser.in_call


def test_in_call_switches_at_the_marker() -> None:
    parser = ToolCallParser("hermes")
    parser.feed("hi <tool_")
    assert not parser.in_call and not parser.marker_seen
    parser.feed("call>{")
    assert parser.in_call and parser.marker_seen
    delta = parser.feed('"name": "x", "arguments": {}}</tool_call>')
    assert not parser.in_call and [c.name for c in delta.calls] == ["x"]


def test_llama3_bare_json_starts_a_call() -> None:
    parser = ToolCallParser("llama3")
    assert parser.feed(" {").text == ""
    assert parser.in_call


def test_markers_are_exported() -> None:
    assert FORMATS["hermes"].start == "<tool_call>" and FORMATS["hermes"].end == "</tool_call>"
    assert FORMATS["generic"].start == "<tool_call>"
    assert FORMATS["llama3"].start == "<|python_tag|>" and FORMATS["llama3"].bare_json_start
    assert FORMATS["mistral"].start == "[TOOL_CALLS]"


@pytest.mark.parametrize(
    ("template", "fmt"),
    [
        ("... <tool_call>\n{{ tool_call | tojson }} ...", "hermes"),
        ("{{ '[TOOL_CALLS]' }}", "mistral"),
        ("<|start_header_id|>ipython ... <|python_tag|>", "llama3"),
        ('<|start_header_id|> {"name": function name, "parameters": dict}', "llama3"),
        ("<start_of_turn>{{ role }}", "generic"),
    ],
)
def test_detect_format(template: str, fmt: str) -> None:
    assert detect_format(template) == fmt
