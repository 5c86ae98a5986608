"""Grammars that enforce tool calls, in each tool-call syntax ``modeld.chat`` parses.

``required`` (and a named tool) constrain the whole output to one or more calls; ``auto``
leaves the model free until a call's marker appears, then constrains the rest of that call
(a "lazy" grammar, :func:`call_grammar`), so a call's arguments are always valid JSON for its
tool. The syntaxes (see the README, "Tools and chat templates"):

- ``hermes``: ``<tool_call>\\n{"name": N, "arguments": {...}}\\n</tool_call>``, repeated;
- ``generic``: ``<tool_call>{"name": N, "arguments": {...}}</tool_call>``, repeated;
- ``llama3``: ``{"name": N, "parameters": {...}}`` (optionally after ``<|python_tag|>``);
- ``mistral``: ``[TOOL_CALLS][{"name": N, "arguments": {...}}, ...]``.

A marker that the model's vocabulary holds as one special token (Qwen's ``<tool_call>``) is
written as that token (``<[id]>``), so the grammar makes the model emit the token it was
trained on rather than spelling the marker out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import llguidance

from modeld.backends._base import EngineModel
from modeld.chat._types import ToolDefinition
from modeld.structured._formats import JSON_OPTIONS, parse_schema

__all__ = ["call_grammar", "calls_grammar"]


def _call_schema(tool: ToolDefinition, arguments_key: str, index: int) -> dict[str, object]:
    parameters = (
        parse_schema(tool.parameters, f"config.tools[{index}].parameters")
        if tool.parameters
        else {"type": "object"}
    )
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _body_schema(tools: Sequence[ToolDefinition], arguments_key: str) -> dict[str, object]:
    calls = [_call_schema(tool, arguments_key, i) for i, tool in enumerate(tools)]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def _json_rule(schema: dict[str, object]) -> str:
    with_options = {**schema, "x-guidance": JSON_OPTIONS}
    return "%json " + json.dumps(with_options, separators=(",", ":"))


def _literal(model: EngineModel, text: str) -> str:
    """``text`` as a Lark terminal: the special token itself when the vocabulary holds the
    marker as one special token, else the quoted text."""
    ids = model.tokenize(text, add_special=False, parse_special=True)
    if len(ids) == 1 and model.grammar_tokenizer().is_special_token(ids[0]):
        return f"<[{ids[0]}]>"
    return json.dumps(text)


def calls_grammar(
    model: EngineModel, fmt: str, tools: Sequence[ToolDefinition], *, several: bool = True
) -> str:
    """The output is one call of ``tools`` (``tool_choice`` required, or one named tool), or
    with ``several`` one or more, in the syntax ``fmt``: llguidance grammar text.

    :raises InvalidArgument: a tool's parameters are not a JSON object schema.
    """
    if fmt == "llama3":
        lark = f"start: body\nbody: {_json_rule(_body_schema(tools, 'parameters'))}\n"
    elif fmt == "mistral":
        array: dict[str, object] = {
            "type": "array",
            "items": _body_schema(tools, "arguments"),
            "minItems": 1,
        }
        if not several:
            array["maxItems"] = 1
        lark = f"start: {_literal(model, '[TOOL_CALLS]')} body\n"
        lark += f"body: {_json_rule(array)}\n"
    else:
        start, end = _literal(model, "<tool_call>"), _literal(model, "</tool_call>")
        newline = '"\\n"' if fmt == "hermes" else ""
        lark = f"start: call ({newline} call)*\n" if several else "start: call\n"
        lark += f"call: {start} {newline} body {newline} {end}\n"
        lark += f"body: {_json_rule(_body_schema(tools, 'arguments'))}\n"
    return llguidance.LLMatcher.grammar_from_lark(lark)


def call_grammar(model: EngineModel, fmt: str, tools: Sequence[ToolDefinition]) -> str:
    """One call, from its marker to its end, in the syntax ``fmt`` (``tool_choice`` auto: the
    grammar switched on once the marker appears; the text already generated since the marker
    is fed to it first)."""
    if fmt == "llama3":
        lark = "start: tag? body\n"
        lark += f"tag: {_literal(model, '<|python_tag|>')}\n"
        lark += f"body: {_json_rule(_body_schema(tools, 'parameters'))}\n"
        return llguidance.LLMatcher.grammar_from_lark(lark)
    if fmt == "mistral":
        return calls_grammar(model, fmt, tools)
    start = _literal(model, "<tool_call>")
    end = _literal(model, "</tool_call>")
    newline = '"\\n"' if fmt == "hermes" else ""
    lark = f"start: {start} {newline} body {newline} {end}\n"
    lark += f"body: {_json_rule(_body_schema(tools, 'arguments'))}\n"
    return llguidance.LLMatcher.grammar_from_lark(lark)
