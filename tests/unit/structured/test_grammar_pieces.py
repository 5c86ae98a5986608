"""modeld.structured on a real vocabulary (the tiny qwen2 fixture's, read by llama.cpp with
vocab_only): format errors, the compile cache, one Decode's constraint, the tool grammars."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llguidance
import pytest

from modeld.chat._types import ToolDefinition
from modeld.structured import GrammarCompiler, ResponseFormat, TokenConstraint
from modeld.structured._formats import grammar_text
from modeld.structured._tool_grammar import call_grammar, calls_grammar
from modeldconn._errors import InvalidArgument, SessionFatal

FIXTURE = Path(__file__).parents[2] / "fixtures" / "tiny-qwen2.gguf"
ADD = ToolDefinition(
    "add",
    "",
    json.dumps(
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        }
    ),
)
ECHO = ToolDefinition("echo", "", "")


class VocabModel:
    """The two things the tool grammars ask of a model: its tokenizer and grammar vocabulary."""

    def __init__(self, vocab: Any, tokenizer: llguidance.LLTokenizer) -> None:
        self._vocab = vocab
        self._tokenizer = tokenizer

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:

        import llama_cpp as ll

        raw = text.encode()
        out = (ll.llama_token * (len(raw) + 8))()
        n = ll.llama_tokenize(self._vocab, raw, len(raw), out, len(out), add_special, parse_special)
        return list(out[:n])

    def grammar_tokenizer(self) -> llguidance.LLTokenizer:
        return self._tokenizer


@pytest.fixture(scope="module")
def model() -> Iterator[VocabModel]:
    ll = pytest.importorskip("llama_cpp")
    from llguidance.llamacpp import lltokenizer_from_vocab

    ll.llama_backend_init()
    params = ll.llama_model_default_params()
    params.vocab_only = True
    loaded = ll.llama_model_load_from_file(str(FIXTURE).encode(), params)
    vocab = ll.llama_model_get_vocab(loaded)
    with warnings.catch_warnings():  # llguidance calls a deprecated llama-cpp-python alias
        warnings.simplefilter("ignore", DeprecationWarning)
        tokenizer = lltokenizer_from_vocab(vocab, eos_token=[ll.llama_vocab_eos(vocab)])
    yield VocabModel(vocab, tokenizer)
    ll.llama_model_free(loaded)


def _ids(model: VocabModel, text: str) -> list[int]:
    return model.grammar_tokenizer().tokenize_str(text)


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        (ResponseFormat("json_schema", '{"type": '), "line 1 column"),
        (ResponseFormat("json_schema", "[1]"), "must be a JSON object"),
        (ResponseFormat("gbnf", "root ::= ("), "GBNF"),
        (ResponseFormat("xml", "<a/>"), "not one of"),
    ],
)
def test_formats_refused_before_compiling_name_the_field(fmt: ResponseFormat, needle: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        grammar_text(fmt)
    assert needle in caught.value.message
    assert str(caught.value.metadata["field"]).startswith("config.response_format")


@pytest.mark.parametrize(
    ("fmt", "place"),
    [
        (ResponseFormat("lark", "start: foo ("), "1(13)"),
        (ResponseFormat("regex", "a(b"), "unclosed group"),
        (ResponseFormat("json_schema", '{"type": "nonsense"}'), "nonsense"),
    ],
)
def test_compile_errors_name_the_place(model: VocabModel, fmt: ResponseFormat, place: str) -> None:
    compiler = GrammarCompiler()
    with pytest.raises(InvalidArgument) as caught:
        compiler.compile(model.grammar_tokenizer(), grammar_text(fmt), fmt.field)
    assert place in caught.value.message, caught.value.message
    assert caught.value.metadata["field"] == fmt.field
    assert compiler.compiles == 0  # nothing cached


def test_compiles_are_cached_least_recently_used_first_out(model: VocabModel) -> None:
    compiler = GrammarCompiler(size=2)
    tokenizer = model.grammar_tokenizer()
    grammars = [grammar_text(ResponseFormat("regex", f"x{i}+")) for i in range(3)]
    first = compiler.compile(tokenizer, grammars[0], "f")
    assert not first.cached and compiler.compile(tokenizer, grammars[0], "f").cached
    compiler.compile(tokenizer, grammars[1], "f")
    compiler.compile(tokenizer, grammars[0], "f")  # 0 is now the most recent
    compiler.compile(tokenizer, grammars[2], "f")  # evicts 1
    assert compiler.compile(tokenizer, grammars[0], "f").cached
    assert not compiler.compile(tokenizer, grammars[1], "f").cached
    assert compiler.compiles == 4


def test_a_constraint_masks_accepts_and_ends(model: VocabModel) -> None:
    tokenizer = model.grammar_tokenizer()
    compiled = GrammarCompiler().compile(
        tokenizer, grammar_text(ResponseFormat("regex", "ab|ac")), "f"
    )
    vocab = tokenizer.vocab_size
    constraint = TokenConstraint(compiled, vocab + 3)  # logits wider than the vocab
    allowed = constraint.allowed()
    assert allowed.shape == (vocab + 3,) and not allowed[vocab:].any()
    (a,) = _ids(model, "a")
    assert allowed[a] and allowed.sum() < vocab // 2
    constraint.accept(a)
    (c,) = _ids(model, "c")
    (x,) = _ids(model, "x")
    assert not constraint.allowed()[x]
    with pytest.raises(SessionFatal):
        constraint.accept(x)
    fresh = TokenConstraint(compiled, vocab)  # a copy: the first one's state is its own
    assert not fresh.done and fresh.accepts([a, c])
    for token in (a, c):
        fresh.accept(token)
    assert fresh.done and fresh.accepting


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("hermes", '<tool_call>\n{"name":"add","arguments":{"a":1,"b":2}}\n</tool_call>'),
        ("generic", '<tool_call>{"name":"echo","arguments":{"x":[1]}}</tool_call>'),
        ("llama3", '{"name":"add","parameters":{"a":1,"b":2}}'),
        ("mistral", '[TOOL_CALLS][{"name":"add","arguments":{"a":1,"b":2}}]'),
    ],
)
def test_tool_grammars_take_their_format_and_refuse_others(
    model: VocabModel, fmt: str, text: str
) -> None:
    tokenizer = model.grammar_tokenizer()
    compiler = GrammarCompiler()
    for grammar in (
        calls_grammar(model, fmt, [ADD, ECHO], several=False),  # type: ignore[arg-type]
        call_grammar(model, fmt, [ADD, ECHO]),  # type: ignore[arg-type]
    ):
        start = compiler.compile(tokenizer, grammar, "config.tools").start()
        ids = tokenizer.tokenize_str(text)
        assert start.try_consume_tokens(ids) == len(ids) and start.is_accepting(), fmt
        bad = compiler.compile(tokenizer, grammar, "config.tools").start()
        wrong = tokenizer.tokenize_str(text.replace('"a":1', '"a":"one"').replace("echo", "nope"))
        assert bad.try_consume_tokens(wrong) < len(wrong)


def test_named_tool_grammar_holds_one_tool(model: VocabModel) -> None:
    tokenizer = model.grammar_tokenizer()
    grammar = calls_grammar(model, "generic", [ADD], several=False)  # type: ignore[arg-type]
    start = GrammarCompiler().compile(tokenizer, grammar, "config.tools").start()
    other = tokenizer.tokenize_str('<tool_call>{"name":"echo","arguments":{}}</tool_call>')
    assert start.try_consume_tokens(other) < len(other)
