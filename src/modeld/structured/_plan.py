"""A Decode's constraints, prepared before it starts: its response format or tool grammar
compiled against the model's vocabulary, and every check that can refuse the Decode.

Runs on a worker thread (compiling takes milliseconds to seconds; the first use of a model
builds its grammar vocabulary, seconds for 262k tokens), before the session's KV is touched:
a Decode this refuses changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modeld.backends._base import EngineModel
from modeld.chat._types import ToolDefinition, check_tools
from modeld.structured._compiler import CompiledGrammar, GrammarCompiler
from modeld.structured._formats import ResponseFormat, grammar_text
from modeld.structured._tool_grammar import call_grammar, calls_grammar
from modeldconn._errors import InvalidArgument

__all__ = ["DecodeConstraints", "prepare_constraints"]


@dataclass(frozen=True)
class DecodeConstraints:
    """``whole``: the grammar of the whole output (a response format, or tool calls under
    ``required`` / a named tool); ``call``: under ``auto``, the grammar of one call, switched
    on at its marker; ``tool_format``: the call syntax to parse ("" when no tools may be
    called); ``tools``: the tools that may be called."""

    whole: CompiledGrammar | None = None
    call: CompiledGrammar | None = None
    tool_format: str = ""
    tools: tuple[ToolDefinition, ...] = ()


NONE = DecodeConstraints()


def prepare_constraints(
    compiler: GrammarCompiler,
    model: EngineModel,
    response_format: ResponseFormat | None,
    tools: Sequence[ToolDefinition],
    tool_choice: str,
    tool_format: str,
    parallel: bool = False,
) -> DecodeConstraints:
    """Any thread but the engine's. ``tool_format``: the syntax, already resolved (the
    request's, else the one detected from the model's template).

    :raises InvalidArgument: a format or tool grammar that does not compile (named); a
        tool_choice without tools, naming an unknown tool, or next to a response_format.
    """
    choice = tool_choice or "auto"
    if tool_choice and not tools:
        raise InvalidArgument(
            f"tool_choice {tool_choice!r} needs tools (config.tools)", field="config.tool_choice"
        )
    if tools:
        check_tools(tuple(tools))
    if response_format is not None:
        if tools and choice != "none":
            raise InvalidArgument(
                "response_format and tools exclude each other (unless tool_choice is none)",
                field="config.response_format",
            )
        grammar = grammar_text(response_format)
        compiled = compiler.compile(model.grammar_tokenizer(), grammar, response_format.field)
        return DecodeConstraints(whole=compiled)
    if not tools or choice == "none":
        return NONE
    tokenizer = model.grammar_tokenizer()
    if choice == "auto":
        grammar = call_grammar(model, tool_format, tools)
        call = compiler.compile(tokenizer, grammar, "config.tools")
        return DecodeConstraints(call=call, tool_format=tool_format, tools=tuple(tools))
    if choice == "required":
        chosen = tuple(tools)
    else:
        chosen = tuple(t for t in tools if t.name == choice)
        if not chosen:
            names = ", ".join(t.name for t in tools)
            raise InvalidArgument(
                f"tool_choice {choice!r}: not auto, none, required or a tool's name ({names})",
                field="config.tool_choice",
            )
    grammar = calls_grammar(model, tool_format, chosen, several=parallel)
    whole = compiler.compile(tokenizer, grammar, "config.tools")
    return DecodeConstraints(whole=whole, tool_format=tool_format, tools=tuple(tools))
