"""The tools conversation the renderer tests (and scripts/render_chat_expected.py) use."""

from __future__ import annotations

import json
from pathlib import Path

from modeld.chat import ChatInput, Message, ToolCall, ToolDefinition, render_template
from modeld.models._gguf import read_gguf_metadata

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TINY_GGUF = FIXTURES / "tiny-qwen2.gguf"
EXPECTED = FIXTURES / "tiny-qwen2.tools-rendering.txt"

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city, e.g. Zürich"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
TOOLS = (
    ToolDefinition("get_weather", "Current weather in a city.", json.dumps(WEATHER)),
    ToolDefinition("get_time", "The local time in a city.", ""),
)
CONVERSATION = ChatInput(
    messages=(
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the weather in Zürich, and the time?"),
        Message(
            "assistant",
            "",
            tool_calls=(
                ToolCall("call_1", "get_weather", '{"city": "Zürich", "unit": "celsius"}', 0),
                ToolCall("call_2", "get_time", '{"city": "Zürich"}', 1),
            ),
        ),
        Message("tool", '{"temperature": 21}', tool_call_id="call_1", name="get_weather"),
        Message("tool", "14:05", tool_call_id="call_2", name="get_time"),
    ),
    add_generation_prompt=True,
    tools=TOOLS,
)


def fixture_template() -> str:
    return str(read_gguf_metadata(TINY_GGUF)["tokenizer.chat_template"])


def render_fixture_tools_conversation() -> str:
    chat = CONVERSATION
    return render_template(
        fixture_template(),
        chat.messages,
        add_generation_prompt=chat.add_generation_prompt,
        tools=chat.tools,
    )
