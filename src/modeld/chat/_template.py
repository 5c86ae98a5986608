"""A model's chat template rendered with Jinja2, sandboxed, the way transformers'
``apply_chat_template`` renders it.

The environment is transformers': ``ImmutableSandboxedEnvironment`` (a template cannot reach
Python objects' internals or mutate its inputs), ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, ``raise_exception(message)``, ``strftime_now(format)`` and a ``tojson``
filter that writes non-ASCII as is and takes ``indent``/``separators``/``sort_keys``. Messages
and tools are passed in OpenAI's shape (see :func:`message_dict`, :func:`tool_dict`). Each
template source is compiled once (an LRU cache).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modeld.chat._types import Message, ToolDefinition, json_object
from modeldconn._errors import InvalidArgument, UnsupportedFeature

__all__ = ["compile_template", "message_dict", "render_template", "tool_dict"]


class TemplateRaised(Exception):
    """The template called ``raise_exception``: the request is what the template refuses."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' override: Jinja's own tojson escapes <, >, & and ' for HTML
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """``source`` compiled (once per source text).

    :raises UnsupportedFeature: the template does not compile, with Jinja's reason.
    """
    try:
        return _environment().from_string(source)
    except jinja2.TemplateError as exc:
        raise UnsupportedFeature(f"the chat template does not compile: {exc}") from None


def tool_dict(tool: ToolDefinition, index: int) -> dict[str, Any]:
    """``{"type": "function", "function": {"name", "description", "parameters": object}}``;
    empty parameters are ``{"type": "object", "properties": {}}``.

    :raises InvalidArgument: parameters that are not a JSON object (``tools[i].parameters``).
    """
    parameters: dict[str, object] = (
        json_object(tool.parameters, f"tools[{index}].parameters")
        if tool.parameters.strip()
        else {"type": "object", "properties": {}}
    )
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": parameters,
        },
    }


def message_dict(message: Message, index: int) -> dict[str, Any]:
    """A message as templates read it: ``role``, ``content`` (always a string), and when set
    ``tool_calls`` (``[{"id", "type": "function", "function": {"name", "arguments": object}}]``),
    ``tool_call_id``, ``name`` and ``reasoning_content`` (the message's thinking).

    :raises InvalidArgument: a call's arguments that are not a JSON object
        (``messages[i].tool_calls[j].arguments``; empty arguments are ``{}``).
    """
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": (
                        json_object(call.arguments, f"messages[{index}].tool_calls[{j}].arguments")
                        if call.arguments.strip()
                        else {}
                    ),
                },
            }
            for j, call in enumerate(message.tool_calls)
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    if message.thinking:
        out["reasoning_content"] = message.thinking
    return out


def render_template(
    source: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    tools: Sequence[ToolDefinition] = (),
    enable_thinking: bool | None = None,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """``messages`` rendered by the template ``source``.

    Variables: ``messages``, ``tools`` (None when there are none, as transformers passes it),
    ``add_generation_prompt``, ``enable_thinking`` (only when not None), ``bos_token``,
    ``eos_token``.

    :raises InvalidArgument: the template called ``raise_exception`` (its message), or a JSON
        field that is not an object.
    :raises UnsupportedFeature: the template does not compile or fails to render.
    """
    template = compile_template(source)
    variables: dict[str, Any] = {
        "messages": [message_dict(m, i) for i, m in enumerate(messages)],
        "tools": [tool_dict(t, i) for i, t in enumerate(tools)] or None,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    if enable_thinking is not None:
        variables["enable_thinking"] = enable_thinking
    try:
        return template.render(**variables)
    except TemplateRaised as exc:
        raise InvalidArgument(f"the chat template refuses the messages: {exc}") from None
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
        # a template written for other inputs (a filter on None, a missing key)
        raise UnsupportedFeature(f"the chat template cannot be rendered: {exc}") from None
