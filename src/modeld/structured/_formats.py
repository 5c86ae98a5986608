"""Response formats (the wire's ``ResponseFormat``) as llguidance grammars.

One grammar engine serves both backends: llguidance (what llama.cpp, vLLM and SGLang use; no
runtime dependencies). xgrammar was not chosen: it pulls in torch and triton. A format becomes
llguidance's grammar text here; compiling it against a model's vocabulary is
``_compiler.GrammarCompiler``'s job, and a format that does not compile is refused there,
naming the place llguidance reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llguidance

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

from modeldconn._errors import InvalidArgument

__all__ = ["FORMAT_KINDS", "JSON_OPTIONS", "ResponseFormat", "grammar_text", "json_object_text"]

FORMAT_KINDS = ("json_schema", "json_object", "regex", "lark", "gbnf")

#: Between JSON tokens: nothing, one space, or one newline and up to 20 spaces or tabs of
#: indentation (llama.cpp's json-schema grammar's ``space`` rule): a pretty-printed layout
#: fits, runs of blank lines do not. llguidance's default (any run of whitespace) lets a small
#: model at temperature 1 spend its whole budget on newlines before the closing brace.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_pattern": r"(?:\x20|\x0A[\x20\x09]{0,20})?"}


@dataclass(frozen=True)
class ResponseFormat:
    """``kind``: one of :data:`FORMAT_KINDS`; ``text``: the schema (JSON text), regex or grammar
    ("" for ``json_object``)."""

    kind: str
    text: str = ""

    @property
    def field(self) -> str:
        """The wire field an error names."""
        return f"config.response_format.{self.kind}"


def json_object_text() -> str:
    return '{"type": "object"}'


def grammar_text(fmt: ResponseFormat) -> str:
    """llguidance's grammar text for ``fmt`` (not yet compiled: see ``GrammarCompiler``).

    :raises InvalidArgument: an unknown kind; a schema that is not JSON (naming line and
        column) or not a JSON object; a GBNF grammar that cannot be converted to Lark.
    """
    if fmt.kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema(
            json_object_text(), defaults=JSON_OPTIONS
        )
    if fmt.kind == "json_schema":
        return schema_grammar(fmt.text, fmt.field)
    if fmt.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(fmt.text)
    if fmt.kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(fmt.text)
    if fmt.kind == "gbnf":
        try:
            lark = llguidance.gbnf_to_lark.any_to_lark(fmt.text)
        except Exception as exc:  # the converter raises bare Exceptions on syntax errors
            raise InvalidArgument(f"GBNF grammar: {exc}", field=fmt.field) from None
        return llguidance.LLMatcher.grammar_from_lark(lark)
    raise InvalidArgument(
        f"response_format kind {fmt.kind!r}: not one of {', '.join(FORMAT_KINDS)}",
        field="config.response_format",
    )


def parse_schema(text: str, field: str) -> dict[str, object]:
    """``text`` as a JSON Schema object.

    :raises InvalidArgument: not JSON (with line and column), or not an object.
    """
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"the JSON schema is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            field=field,
        ) from None
    if not isinstance(schema, dict):
        raise InvalidArgument("a JSON schema must be a JSON object", field=field)
    return schema


def schema_grammar(text: str, field: str) -> str:
    """The grammar of JSON documents valid for the schema ``text``.

    :raises InvalidArgument: see :func:`parse_schema`.
    """
    schema = parse_schema(text, field)
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise InvalidArgument(f"the JSON schema: {exc}", field=field) from None
