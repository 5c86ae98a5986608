"""The sandboxed renderer: the fixture's tools conversation renders exactly the committed
expected text (and what transformers renders, where it is installed); the environment is
transformers'; template errors are typed."""

from __future__ import annotations

import json

import pytest
from chat_conversations import (
    CONVERSATION,
    EXPECTED,
    fixture_template,
    render_fixture_tools_conversation,
)

from modeld.chat import Message, compile_template, render_template
from modeld.chat._template import message_dict, tool_dict
from modeldconn._errors import InvalidArgument, UnsupportedFeature


def test_tools_conversation_renders_the_committed_expectation() -> None:
    assert render_fixture_tools_conversation() == EXPECTED.read_text(encoding="utf-8")


def test_tools_conversation_equals_transformers() -> None:
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    compiled = utils._compile_jinja_template(fixture_template())
    chat = CONVERSATION
    theirs = compiled.render(
        messages=[message_dict(m, i) for i, m in enumerate(chat.messages)],
        tools=[tool_dict(t, i) for i, t in enumerate(chat.tools)],
        add_generation_prompt=True,
    )
    assert render_fixture_tools_conversation() == theirs


def _render(source: str, enable_thinking: bool | None = None) -> str:
    return render_template(
        source,
        [Message("user", "héllo <b>")],
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )


def test_environment_is_transformers() -> None:
    # trim_blocks / lstrip_blocks, loopcontrols, tojson without HTML escaping and with indent
    source = (
        "{% for m in messages %}\n  {% if loop.first %}{% continue %}{% endif %}x{% endfor %}\n"
        "{{ messages[0].content | tojson }}|{{ {'a': [1]} | tojson(indent=1) }}"
        "|{{ strftime_now('%Y') | length }}"
    )
    assert _render(source) == '"héllo <b>"|' + json.dumps({"a": [1]}, indent=1) + "|4"


def test_enable_thinking_is_undefined_unless_set() -> None:
    source = "{{ 'unset' if enable_thinking is not defined else enable_thinking }}"
    assert _render(source) == "unset"
    assert _render(source, enable_thinking=False) == "False"


def test_tools_is_none_without_tools() -> None:
    assert _render("{{ tools is none }}") == "True"


def test_raise_exception_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="roles must alternate"):
        _render("{{ raise_exception('roles must alternate') }}")


def test_sandbox_refuses_internals() -> None:
    with pytest.raises(UnsupportedFeature):
        _render("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(UnsupportedFeature):
        _render("{% set x = messages.append(1) %}")  # immutable inputs


def test_a_broken_template_is_unsupported() -> None:
    with pytest.raises(UnsupportedFeature, match="does not compile"):
        _render("{% for %}")


def test_templates_compile_once() -> None:
    source = "{{ messages | length }}"
    assert compile_template(source) is compile_template(source)


def test_tool_call_arguments_must_be_an_object() -> None:
    from modeld.chat import ToolCall

    bad = Message("assistant", "", tool_calls=(ToolCall("c", "f", "[1]", 0),))
    with pytest.raises(InvalidArgument) as info:
        render_template("x", [bad], add_generation_prompt=False)
    assert info.value.metadata.get("field") == "messages[0].tool_calls[0].arguments"
