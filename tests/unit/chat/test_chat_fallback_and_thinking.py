"""The fallback rendering for templates without tools, tool definition checks, and the
thinking splitter (streamed whole or a character at a time: same result)."""

from __future__ import annotations

import pytest

from modeld.chat import (
    ChatInput,
    Message,
    ThinkingSplitter,
    ToolCall,
    ToolDefinition,
    apply_fallback,
    check_tools,
    prompt_opens_thinking,
    render_template,
    renders_tools,
)
from modeld.models._catalog import GEMMA3_TEMPLATE
from modeldconn._errors import InvalidArgument

TOOL = ToolDefinition("get_time", "The time.", '{"type": "object", "properties": {}}')
CALL = ToolCall("call_1", "get_time", '{"city":"Paris"}', 0)


def test_gemma_falls_back_and_renders_the_documented_text() -> None:
    assert not renders_tools(GEMMA3_TEMPLATE)
    chat = ChatInput(
        messages=(
            Message("user", "Time?"),
            Message("assistant", "", tool_calls=(CALL,)),
            Message("tool", "14:05", tool_call_id="call_1", name="get_time"),
        ),
        add_generation_prompt=True,
        tools=(TOOL,),
    )
    messages, origin = apply_fallback(chat, GEMMA3_TEMPLATE)
    assert origin == (-1, 0, 1, 2)
    rendered = render_template(GEMMA3_TEMPLATE, messages, add_generation_prompt=True)
    tools_json = (
        '{"type": "function", "function": {"name": "get_time", "description": "The time.", '
        '"parameters": {"type": "object", "properties": {}}}}'
    )
    assert rendered == (
        "<start_of_turn>user\n# Tools\n\n"
        "You may call one or more of these tools. Each is a JSON object on its own line:\n"
        f"{tools_json}\n\n"
        "To call tools, write one line per call, each a JSON object between <tool_call> and "
        "</tool_call>:\n"
        '<tool_call>{"name": "<tool name>", "arguments": <the arguments as a JSON object>}'
        "</tool_call>\n\nTime?<end_of_turn>\n"
        '<start_of_turn>model\n<tool_call>{"name": "get_time", "arguments": {"city": "Paris"}}'
        "</tool_call><end_of_turn>\n"
        '<start_of_turn>user\n<tool_response name="get_time" id="call_1">\n14:05\n'
        "</tool_response><end_of_turn>\n<start_of_turn>model\n"
    )


def test_fallback_appends_to_an_existing_system_message() -> None:
    chat = ChatInput((Message("system", "Be brief."), Message("user", "x")), True, (TOOL,))
    messages, origin = apply_fallback(chat, GEMMA3_TEMPLATE)
    assert origin == (0, 1)
    assert messages[0].content.startswith("Be brief.\n\n# Tools\n")


def test_a_template_with_a_tool_role_keeps_tool_messages() -> None:
    template = "{% for m in messages %}{% if m.role == 'tool' %}T{% endif %}{% endfor %}"
    chat = ChatInput((Message("tool", "r", tool_call_id="c"),), True)
    messages, _ = apply_fallback(chat, template)
    assert messages == chat.messages


@pytest.mark.parametrize(
    ("tools", "field"),
    [
        ((ToolDefinition("bad name"),), "tools[0].name"),
        ((ToolDefinition("x" * 65),), "tools[0].name"),
        ((ToolDefinition("f", "", "[1]"),), "tools[0].parameters"),
        ((ToolDefinition("f", "", "{"),), "tools[0].parameters"),
        ((ToolDefinition("f"), ToolDefinition("f")), "tools[1].name"),
        (tuple(ToolDefinition(f"f{i}") for i in range(129)), "tools"),
    ],
)
def test_tool_definitions_are_checked(tools: tuple[ToolDefinition, ...], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_tools(tools)
    assert info.value.metadata["field"] == field


def test_good_tool_definitions_pass() -> None:
    check_tools((ToolDefinition("a.b-c_1", "", ""), TOOL))


def _split(text: str, step: int, *, open_at_start: bool = False) -> tuple[str, str, bool]:
    splitter = ThinkingSplitter(open_at_start=open_at_start)
    thinking, answer = "", ""
    for at in range(0, len(text), step):
        t, a = splitter.feed(text[at : at + step])
        thinking, answer = thinking + t, answer + a
    t, a = splitter.flush()
    return thinking + t, answer + a, splitter.thinking_seen


@pytest.mark.parametrize(
    ("text", "open_at_start", "thinking", "answer"),
    [
        ("\n<think>\nLet me see.\n</think>\n\nParis.", False, "\nLet me see.\n", "Paris."),
        ("Paris. <think>not thinking</think>", False, "", "Paris. <think>not thinking</think>"),
        ("still thinking</think>Answer", True, "still thinking", "Answer"),
        ("<think>cut short </thi", False, "cut short </thi", ""),
        ("<thin", False, "", "<thin"),
        ("  plain", False, "", "  plain"),
        ("<think></think>", False, "", ""),
    ],
)
def test_thinking_splits_streamed_or_whole(
    text: str, open_at_start: bool, thinking: str, answer: str
) -> None:
    whole = _split(text, len(text), open_at_start=open_at_start)
    assert _split(text, 1, open_at_start=open_at_start) == whole
    assert whole[:2] == (thinking, answer)


def test_partial_markers_are_held_only_while_undecided() -> None:
    splitter = ThinkingSplitter()
    assert splitter.feed("<think>a</th") == ("a", "")
    assert splitter.in_thinking
    assert splitter.feed("ink>b") == ("", "b")
    assert not splitter.in_thinking


def test_prompt_opens_thinking() -> None:
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<think>\n\n</think>\n\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n")
