"""Anthropic's Messages API: ``POST /v1/messages`` (streamed or not) and
``POST /v1/messages/count_tokens``, each turn on a session of its own (``_binding``, ``_turn``),
exactly as the OpenAI routes.

Mapping onto modeld:

* ``system`` (a string, or text blocks joined by a blank line) is the first system message;
  ``messages`` are user/assistant turns whose text blocks are joined by a blank line; an
  assistant's ``tool_use`` blocks are its ``tool_calls`` (``input`` as JSON text), its
  ``thinking`` blocks its thinking (``redacted_thinking`` is dropped); a user's ``tool_result``
  blocks are ``tool`` messages (the tool's name looked up from the call's id), before the
  user's own text. ``tools`` are tool definitions (``input_schema`` the parameters);
  ``tool_choice`` auto/any/tool/none is modeld's auto/required/NAME/none, and
  ``disable_parallel_tool_use: false`` allows several calls per turn (modeld's default is one).
* ``thinking`` enabled is the template's ``enable_thinking`` with ``thinking_budget`` =
  ``budget_tokens``; disabled turns it off. Thinking comes back as ``thinking`` blocks.
* An absent ``temperature`` (and top_p, top_k) takes modeld's default (greedy), as the OpenAI
  routes do; Anthropic's own default (1.0) would make a local agent's runs unrepeatable.
* ``stop_reason``: eos/grammar_end/cancelled → end_turn, stop/stop_token → stop_sequence
  (``stop_sequence`` the string), max_tokens/context_full → max_tokens, calls → tool_use.

Usage, always from the turn's real EnsurePrefix (``input_tokens + cache_creation_input_tokens
+ cache_read_input_tokens`` is the whole rendered prompt, as at Anthropic):

* ``cache_read_input_tokens``: EnsurePrefix's ``reused`` (the prompt's prefix the session
  already held, or copied from another session's KV);
* ``cache_creation_input_tokens``: prompt tokens computed now up to the last ``cache_control``
  breakpoint (0 without one; see :func:`breakpoint_position`);
* ``input_tokens``: the rest, computed now after the breakpoint.

Errors answer Anthropic's ``{"type": "error", "error": {"type", "message"}}`` on every path
under ``/v1/messages`` (the middleware's 401/503 included: ``_errors.DEFAULT_SHAPES``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modeld.backends._base import check_generates
from modeld.chat._types import ChatInput, Message, ToolCall, ToolDefinition
from modeld.http._app import Ctx, HttpContext
from modeld.http._errors import DEFAULT_SHAPES, ApiError, HttpError, api_error
from modeld.http._turn import Turn, resolve_model, start_turn
from modeld.sessions._turns import TapedStep
from modeld.sessions._types import DecodeOptions
from modeldconn._errors import RemoteError
from modeldconn._types import DecodeFinal

from ._anthropic_schema import (
    CountTokensRequest,
    MessageIn,
    MessagesRequest,
    TextBlock,
    ThinkingBlock,
    ToolIn,
    ToolResultBlock,
    ToolUseBlock,
    _Prompt,
)

__all__ = ["anthropic_body", "breakpoint_position", "chat_input", "router"]

router = APIRouter()

PREFIX = "/v1/messages"
SESSION_ID_HEADER = "x-session-id"
#: appended to the block carrying the last breakpoint to find its token position: a character
#: no tokenizer merges with ordinary text before it, then text no request contains
SENTINEL = "\u2063\u2063modeld-cache-breakpoint\u2063\u2063"

#: modeld's (OpenAI's) error type → Anthropic's
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "service_unavailable": "overloaded_error",
    "server_error": "api_error",
}

STOP_REASONS = {
    "eos": "end_turn",
    "grammar_end": "end_turn",
    "cancelled": "end_turn",
    "stop": "stop_sequence",
    "stop_token": "stop_sequence",
    "max_tokens": "max_tokens",
    "context_full": "max_tokens",
    "tool_calls": "tool_use",
}

#: the session layer's and DecodeOptions' field names → the request's
_FIELDS = {
    "": "messages",
    "tokens": "messages",
    "text": "messages",
    "stop": "stop_sequences",
    "thinking_budget": "thinking.budget_tokens",
    "parallel_tool_calls": "tool_choice",
}


def anthropic_body(error: ApiError) -> dict[str, Any]:
    """Anthropic's error body; the refused field leads the message (Anthropic's own style:
    ``messages.0.content: ...``), the typed error's facts ride in ``modeld``."""
    message = error.message
    if error.param and not message.startswith(error.param):
        message = f"{error.param}: {message}"
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(error.type, "api_error"), "message": message},
    }
    if error.metadata:
        body["error"]["modeld"] = error.metadata
    return body


# every app (the middleware's refusals included) answers /v1/messages... in Anthropic's shape
DEFAULT_SHAPES[PREFIX] = anthropic_body


def _param(field: str) -> str:
    if field.startswith("config."):
        field = field.removeprefix("config.")
    if field.startswith(("messages", "tools")):
        # the rendered chat's indices are not the request's (system first, tool results split)
        return field.split("[", 1)[0].split(".", 1)[0]
    return _FIELDS.get(field, field)


@contextmanager
def _request_fields() -> Iterator[None]:
    """Refusals of the session layer name the request's own fields."""
    try:
        yield
    except RemoteError as exc:
        if "field" in exc.metadata:
            exc.metadata["field"] = _param(exc.metadata["field"])
        raise


# -- requests → session inputs and decode options --------------------------------------------

#: where the last cache_control sits: ("tools", i) | ("system", j) | ("messages", i, j)
Mark = tuple[str, int] | tuple[str, int, int]


def last_breakpoint(body: _Prompt) -> Mark | None:
    """The last block carrying ``cache_control``, in Anthropic's order (tools, system,
    messages); a top-level ``cache_control`` (automatic caching) marks the last message's last
    block (a string content counts as one text block)."""
    if body.cache_control is not None:
        last = body.messages[-1].content
        if isinstance(last, str) or last:  # an empty message has no block to mark
            at = 0 if isinstance(last, str) else len(last) - 1
            return ("messages", len(body.messages) - 1, at)
    found: Mark | None = None
    for i, tool in enumerate(body.tools or ()):
        if tool.cache_control is not None:
            found = ("tools", i)
    if isinstance(body.system, list):
        for j, block in enumerate(body.system):
            if block.cache_control is not None:
                found = ("system", j)
    for i, message in enumerate(body.messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.cache_control is not None:
                    found = ("messages", i, j)
    return found


def _text(blocks: list[TextBlock], marked: int | None) -> str:
    return "\n\n".join(b.text + (SENTINEL if k == marked else "") for k, b in enumerate(blocks))


def _tools(tools: list[ToolIn] | None, marked: int | None) -> tuple[ToolDefinition, ...]:
    defined = []
    for i, tool in enumerate(tools or ()):
        description = tool.description + (SENTINEL if i == marked else "")
        defined.append(
            ToolDefinition(
                tool.name, description, json.dumps(tool.input_schema, ensure_ascii=False)
            )
        )
    return tuple(defined)


def _tool_result(block: ToolResultBlock, name: str, mark: bool) -> Message:
    content = block.content if isinstance(block.content, str) else _text(block.content, None)
    if block.is_error:
        content = f"Error: {content}"  # the template has no error flag: say it in the text
    return Message("tool", content + (SENTINEL if mark else ""), tool_call_id=block.tool_use_id,
                   name=name)  # fmt: skip


def _messages(
    message: MessageIn, i: int, mark: Mark | None, names: dict[str, str]
) -> list[Message]:
    """One Anthropic message as modeld's chat messages (a user's tool results become ``tool``
    messages, ahead of the user's text)."""
    marked = mark[2] if mark is not None and len(mark) == 3 and mark[1] == i else None
    if isinstance(message.content, str):
        return [Message(message.role, message.content + (SENTINEL if marked == 0 else ""))]
    texts: list[TextBlock] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    text_mark: int | None = None
    thinking_mark = False
    for j, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            if j == marked:
                text_mark = len(texts)
            texts.append(block)
        elif isinstance(block, ToolResultBlock):
            if message.role != "user":
                raise HttpError.invalid(
                    "tool_result blocks belong in user messages", f"messages.{i}.content.{j}"
                )
            results.append(_tool_result(block, names.get(block.tool_use_id, ""), j == marked))
        elif isinstance(block, ToolUseBlock):
            if message.role != "assistant":
                raise HttpError.invalid(
                    "tool_use blocks belong in assistant messages", f"messages.{i}.content.{j}"
                )
            names[block.id] = block.name
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(ToolCall(block.id, block.name, arguments, len(calls)))
            if j == marked:
                # a call is markup rendered after the text: the breakpoint counts at the text's
                # end, before the calls (conservative: never past the marked block)
                text_mark = len(texts)
                texts.append(TextBlock(type="text", text=""))
        elif isinstance(block, ThinkingBlock):
            thinking.append(block.thinking)
            thinking_mark = thinking_mark or j == marked
        # redacted_thinking: another provider's encrypted thinking, nothing to render
    out = list(results)
    content = _text(texts, text_mark)
    think = "\n\n".join(thinking) + (SENTINEL if thinking_mark else "")
    if content or calls or think or not results:
        out.append(Message(message.role, content, tuple(calls), thinking=think))
    return out


def chat_input(body: _Prompt, mark: Mark | None = None) -> ChatInput:
    """The request as the session layer's chat input; with ``mark``, :data:`SENTINEL` follows
    the marked block (to find its token position).

    :raises HttpError: a block in a role that cannot carry it (400 naming it)."""
    system_mark = mark[1] if mark is not None and mark[0] == "system" else None
    tools_mark = mark[1] if mark is not None and mark[0] == "tools" else None
    messages: list[Message] = []
    if isinstance(body.system, str) and body.system:
        messages.append(Message("system", body.system))
    elif isinstance(body.system, list) and body.system:
        messages.append(Message("system", _text(body.system, system_mark)))
    names: dict[str, str] = {}
    for i, message in enumerate(body.messages):
        messages += _messages(message, i, mark if mark and mark[0] == "messages" else None, names)
    enable = None if body.thinking is None else body.thinking.type == "enabled"
    return ChatInput(tuple(messages), True, _tools(body.tools, tools_mark), enable_thinking=enable)


def options(body: MessagesRequest) -> DecodeOptions:
    """:raises HttpError / InvalidArgument: a field out of range, naming it."""
    values: dict[str, object] = {"max_tokens": body.max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(body, name)
        if value is not None:
            values[name] = value
    if body.stop_sequences:
        values["stop"] = tuple(body.stop_sequences)
    tools = _tools(body.tools, None)
    if tools:
        values["tools"] = tools
    choice = body.tool_choice
    if choice is not None:
        if choice.type == "tool":
            if not choice.name:
                raise HttpError.invalid("tool_choice type tool needs a name", "tool_choice.name")
            values["tool_choice"] = choice.name
        else:
            values["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use is not None:
            values["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    if body.thinking is not None and body.thinking.type == "enabled":
        if body.thinking.budget_tokens is None:
            raise HttpError.invalid("thinking enabled needs budget_tokens", "thinking")
        values["thinking_budget"] = body.thinking.budget_tokens
    return DecodeOptions.from_fields(values)


async def _tokens(ctx: HttpContext, model: str, value: ChatInput) -> list[int]:
    spec = await resolve_model(ctx.sessions, model)
    check_generates(spec.facts)
    loaded = await ctx.sessions.load_model(spec)
    tokens, _ = await ctx.sessions.render(loaded, value)
    return tokens


async def breakpoint_position(ctx: HttpContext, body: _Prompt, tokens: list[int]) -> int:
    """The token position where the last ``cache_control`` breakpoint's block ends in the
    rendered prompt ``tokens`` (0 without a breakpoint).

    The request is rendered again with :data:`SENTINEL` after the marked block; the position is
    the longest common token prefix of the two renderings. Where the template writes the marked
    part after unmarked text (tools go at the end of the system message in the fallback
    rendering; a tool_use block counts at the end of its message's text), the position is where
    the marked part ends in the rendering, so it covers what was rendered before it too."""
    mark = last_breakpoint(body)
    if mark is None:
        return 0
    marked = await _tokens(ctx, body.model, chat_input(body, mark))
    n = 0
    for a, b in zip(tokens, marked, strict=False):
        if a != b:
            break
        n += 1
    return n


def usage(turn: Turn, position: int, output_tokens: int) -> dict[str, Any]:
    prompt = turn.diagnostics.prompt_tokens
    read = turn.prefix.reused
    creation = max(0, min(position, prompt) - read)
    return {
        "input_tokens": prompt - read - creation,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": creation,
        "cache_read_input_tokens": read,
    }


def stop_reason(final: DecodeFinal | None, calls: bool) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)``."""
    if calls:
        return "tool_use", None
    if final is None:
        return "end_turn", None
    reason = STOP_REASONS.get(final.stop_reason, "end_turn")
    sequence = final.stop_string or None if reason == "stop_sequence" else None
    return reason, sequence


def _tool_use(call: ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.arguments) if call.arguments else {}
    except json.JSONDecodeError:
        arguments = {}  # the parser returns calls whose arguments parse; never reached
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _steps(turn: Turn) -> AsyncIterator[TapedStep]:
    with _request_fields():
        async for step in turn.steps():
            yield step


# -- routes --------------------------------------------------------------------------------------


@router.post(PREFIX, response_model=None)
async def messages(body: MessagesRequest, request: Request, ctx: Ctx) -> Response:
    """A turn: the whole conversation rendered, its common prefix reused, then Decode.

    :returns: Anthropic's ``message`` object (``content`` thinking/text/tool_use blocks,
        ``stop_reason``, ``usage``, and modeld's ``modeld`` diagnostics), or its SSE events.
    :raises: (as Anthropic error bodies) 400 a malformed body or a refused field (named),
        a prompt over the context; 404 an unknown model; 429 overloaded; 503 not serving."""
    value = chat_input(body)
    with _request_fields():
        decode = options(body)
        position = 0
        if last_breakpoint(body) is not None:
            position = await breakpoint_position(ctx, body, await _tokens(ctx, body.model, value))
        name = request.headers.get(SESSION_ID_HEADER) or None
        turn = await start_turn(ctx.sessions, ctx.binder, body.model, value, decode, name)
    headers = turn.diagnostics.headers()
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    if body.stream:
        events = _events(turn, message_id, body.model, position)
        return StreamingResponse(
            _stream_errors(events, turn), media_type="text/event-stream", headers=headers
        )
    text: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    final: DecodeFinal | None = None
    async for step in _steps(turn):
        text.append(step.text)
        thinking.append(step.thinking)
        calls.extend(step.tool_calls)
        final = step.final or final
    content: list[dict[str, Any]] = []
    if any(thinking):
        content.append({"type": "thinking", "thinking": "".join(thinking), "signature": ""})
    if any(text) or not calls:
        content.append({"type": "text", "text": "".join(text)})
    content += [_tool_use(c) for c in calls]
    reason, sequence = stop_reason(final, bool(calls))
    payload = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(turn, position, final.completion_tokens if final else 0),
        "modeld": turn.diagnostics.body(),
    }
    return JSONResponse(payload, headers=headers)


async def _events(turn: Turn, message_id: str, model: str, position: int) -> AsyncIterator[bytes]:
    """message_start, then one content block per run of thinking or text and one per tool
    call (its input as a single input_json_delta: modeld returns a call whole), then
    message_delta (stop_reason, usage) and message_stop."""
    yield _event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage(turn, position, 0),
            },
        },
    )
    index = -1
    open_kind: str | None = None  # "text" | "thinking": the block being streamed

    def start(kind: str, block: dict[str, Any]) -> bytes:
        nonlocal index, open_kind
        index += 1
        open_kind = kind
        return _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )

    def stop() -> bytes:
        nonlocal open_kind
        open_kind = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": index})

    def delta(data: dict[str, Any]) -> bytes:
        return _event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": data}
        )

    final: DecodeFinal | None = None
    calls = False
    async for step in _steps(turn):
        if step.thinking:
            if open_kind != "thinking":
                if open_kind is not None:
                    yield stop()
                yield start("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            yield delta({"type": "thinking_delta", "thinking": step.thinking})
        if step.text:
            if open_kind != "text":
                if open_kind is not None:
                    yield stop()
                yield start("text", {"type": "text", "text": ""})
            yield delta({"type": "text_delta", "text": step.text})
        for call in step.tool_calls:
            calls = True
            if open_kind is not None:
                yield stop()
            block = _tool_use(call)
            yield start("tool_use", {**block, "input": {}})
            yield delta({"type": "input_json_delta", "partial_json": json.dumps(block["input"])})
            yield stop()
        final = step.final or final
    if open_kind is not None:
        yield stop()
    if index < 0:  # an empty reply is still one (empty) text block, as the non-streamed one
        yield start("text", {"type": "text", "text": ""})
        yield stop()
    reason, sequence = stop_reason(final, calls)
    yield _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(turn, position, final.completion_tokens if final else 0),
            "modeld": turn.diagnostics.body(),
        },
    )
    yield _event("message_stop", {"type": "message_stop"})


async def _stream_errors(events: AsyncIterator[bytes], turn: Turn) -> AsyncIterator[bytes]:
    """``events``; a failure after the stream started is Anthropic's ``error`` event (the
    status line has gone), and the Decode is always closed."""
    try:
        async for event in events:
            yield event
    except RemoteError as exc:
        yield _event("error", anthropic_body(api_error(exc, _param)))
    finally:
        await turn.close()


@router.post(f"{PREFIX}/count_tokens")
async def count_tokens(body: CountTokensRequest, ctx: Ctx) -> dict[str, int]:
    """``{"input_tokens": N}``: the rendered prompt's tokens (what a message with this body
    reports as input_tokens + cache_creation_input_tokens + cache_read_input_tokens), without
    touching a session.

    :raises: 400 a malformed body or a prompt refused by the renderer; 404 an unknown model."""
    with _request_fields():
        tokens = await _tokens(ctx, body.model, chat_input(body))
    return {"input_tokens": len(tokens)}
