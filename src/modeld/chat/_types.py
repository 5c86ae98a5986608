"""The chat input's domain types: messages, tool definitions and tool calls.

Built by the servicer from the wire (``rpc._convert.input_from_pb``) and rendered by
:mod:`modeld.chat._template`. JSON-valued fields (a tool's ``parameters``, a call's
``arguments``) stay JSON *text* here, as on the wire; the renderer parses them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from modeldconn._errors import InvalidArgument

__all__ = [
    "MAX_TOOLS",
    "ChatInput",
    "Message",
    "ToolCall",
    "ToolDefinition",
    "check_tools",
    "json_object",
]

#: at most this many tool definitions in one chat input
MAX_TOOLS = 128
#: a tool name: what OpenAI accepts, and what every tool-call syntax can carry unescaped
TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class ToolDefinition:
    name: str
    description: str = ""
    #: a JSON Schema as JSON text (an object), or empty for a tool without parameters
    parameters: str = ""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  #: JSON text of an object
    index: int = 0  #: the call's position among its message's (or Decode's) calls


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""  #: role ``tool``: the call this result answers
    name: str = ""  #: role ``tool``: the tool's name (some templates render it)
    thinking: str = ""  #: an assistant turn's reasoning (``reasoning_content`` in templates)


@dataclass(frozen=True)
class ChatInput:
    messages: tuple[Message, ...]
    add_generation_prompt: bool
    tools: tuple[ToolDefinition, ...] = ()
    #: passed to the template as ``enable_thinking``; None leaves the variable undefined
    enable_thinking: bool | None = None

    @property
    def uses_tools(self) -> bool:
        """Tool definitions or tool calls in it (what makes a template without tool support
        take the fallback rendering)."""
        return bool(self.tools) or any(m.tool_calls for m in self.messages)


def json_object(text: str, field: str) -> dict[str, object]:
    """``text`` parsed as a JSON object.

    :raises InvalidArgument: not JSON, or JSON but not an object, naming ``field``.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not JSON: {exc}", field=field) from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object", field=field)
    return value


def check_tools(tools: tuple[ToolDefinition, ...]) -> None:
    """:raises InvalidArgument: more than :data:`MAX_TOOLS`, a name outside
    ``[A-Za-z0-9_.-]{1,64}`` or used twice, or parameters that are neither empty nor a JSON
    object (``field`` ``tools[i].name`` / ``tools[i].parameters``)."""
    if len(tools) > MAX_TOOLS:
        raise InvalidArgument(f"{len(tools)} tools; at most {MAX_TOOLS}", field="tools")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not TOOL_NAME.fullmatch(tool.name):
            raise InvalidArgument(
                f"tool name {tool.name!r} must be 1..64 characters of [A-Za-z0-9_.-]",
                field=f"tools[{i}].name",
            )
        if tool.name in seen:
            raise InvalidArgument(f"tool {tool.name!r} is defined twice", field=f"tools[{i}].name")
        seen.add(tool.name)
        if tool.parameters.strip():
            json_object(tool.parameters, f"tools[{i}].parameters")
