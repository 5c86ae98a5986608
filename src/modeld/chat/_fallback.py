"""The documented rendering for chat templates that do not render tools.

A template whose source never mentions ``tools`` (Gemma 3's, any plain ChatML one) knows
nothing of tool definitions or calls. When a chat input carries them, the conversation is
rewritten into plain messages first, then rendered by the template as usual:

- the tool definitions and how to call them (:func:`tools_text`) go at the end of the first
  system message, which is created when there is none (Gemma's template folds it into the
  first user turn);
- an assistant's ``tool_calls`` are written after its content in the generic call format,
  one ``<tool_call>{"name": NAME, "arguments": OBJ}</tool_call>`` a line;
- when the template has no ``tool`` role either, a ``tool`` message becomes a ``user`` message
  holding ``<tool_response name="NAME" id="ID">\\nCONTENT\\n</tool_response>`` (attributes as
  JSON strings, each only when set).

The reply to EnsurePrefix / PrefillSuffix says ``rendering: "fallback"`` when this was used.
"""

from __future__ import annotations

import json
import re

from modeld.chat._template import tool_dict
from modeld.chat._types import ChatInput, Message, ToolCall, json_object

__all__ = ["apply_fallback", "call_text", "has_tool_role", "renders_tools", "tools_text"]

_TOOL_ROLE = re.compile(r"""['"]tool['"]""")


def renders_tools(template: str) -> bool:
    """The template renders tool definitions itself (its source mentions ``tools``)."""
    return "tools" in template


def has_tool_role(template: str) -> bool:
    """The template handles messages of role ``tool`` (compares a role with ``'tool'``)."""
    return _TOOL_ROLE.search(template) is not None


def tools_text(chat: ChatInput) -> str:
    """The system text that defines ``chat.tools`` and the generic call format."""
    lines = [
        "# Tools",
        "",
        "You may call one or more of these tools. Each is a JSON object on its own line:",
    ]
    lines += [
        json.dumps(tool_dict(tool, i), ensure_ascii=False) for i, tool in enumerate(chat.tools)
    ]
    lines += [
        "",
        "To call tools, write one line per call, each a JSON object between <tool_call> and "
        "</tool_call>:",
        '<tool_call>{"name": "<tool name>", "arguments": <the arguments as a JSON object>}'
        "</tool_call>",
    ]
    return "\n".join(lines)


def call_text(call: ToolCall, field: str) -> str:
    """One call in the generic format (arguments re-serialised; empty arguments are ``{}``).

    :raises InvalidArgument: arguments that are not a JSON object, named ``field``.
    """
    arguments = json_object(call.arguments, field) if call.arguments.strip() else {}
    body = json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>{body}</tool_call>"


def _response_text(message: Message) -> str:
    attributes = "".join(
        f" {key}={json.dumps(value, ensure_ascii=False)}"
        for key, value in (("name", message.name), ("id", message.tool_call_id))
        if value
    )
    return f"<tool_response{attributes}>\n{message.content}\n</tool_response>"


def apply_fallback(chat: ChatInput, template: str) -> tuple[tuple[Message, ...], tuple[int, ...]]:
    """``chat``'s messages rewritten as plain messages for ``template`` (see the module), and
    for each the index of the message it came from in ``chat`` (-1: the created system one).

    :raises InvalidArgument: a call's arguments that are not a JSON object
        (``messages[i].tool_calls[j].arguments``).
    """
    out: list[Message] = []
    origin = list(range(len(chat.messages)))
    wrap_tool = not has_tool_role(template)
    for i, message in enumerate(chat.messages):
        if message.tool_calls:
            calls = "\n".join(
                call_text(call, f"messages[{i}].tool_calls[{j}].arguments")
                for j, call in enumerate(message.tool_calls)
            )
            content = f"{message.content}\n{calls}" if message.content else calls
            out.append(Message(message.role, content, thinking=message.thinking))
        elif message.role == "tool" and wrap_tool:
            out.append(Message("user", _response_text(message)))
        else:
            out.append(message)
    if chat.tools:
        text = tools_text(chat)
        if out and out[0].role == "system":
            first = out[0]
            joined = f"{first.content}\n\n{text}" if first.content else text
            out[0] = Message("system", joined, thinking=first.thinking)
        else:
            out.insert(0, Message("system", text))
            origin.insert(0, -1)
    return tuple(out), tuple(origin)
