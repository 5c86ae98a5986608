"""OpenAI's API: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``
and ``POST /v1/embeddings``, each turn on a session of its own (``_binding``, ``_turn``).

Conventions where OpenAI has none: thinking streams as ``reasoning_content`` (llama-server's
and DeepSeek's field); an absent ``temperature`` (and the other sampling fields) takes modeld's
default (greedy), as llama-server takes its own; ``parallel_tool_calls`` defaults to false (one
call per turn, as llama-server). Every response carries the cache diagnostics in the
``x-modeld-*`` headers and a ``modeld`` field.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modeld.chat._types import ChatInput, Message, ToolCall, ToolDefinition
from modeld.http._app import Ctx, HttpContext
from modeld.http._errors import HttpError, api_error, openai_body
from modeld.http._openai_schema import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    NamedToolChoice,
    ToolIn,
    _Sampling,
)
from modeld.http._turn import Turn, field_names, resolve_model, start_turn
from modeld.sessions._embeddings import EmbedRequest
from modeld.sessions._turns import TapedStep
from modeld.sessions._types import DecodeOptions, SessionInput, TextInput
from modeld.structured._formats import ResponseFormat
from modeldconn._errors import RemoteError
from modeldconn._types import DecodeFinal, TokenLogprob

__all__ = ["router"]

router = APIRouter()

SESSION_ID_HEADER = "x-session-id"
#: an absent max_tokens: until EOS or a full context, as OpenAI's chat completions
UNBOUNDED = 1 << 31
#: legacy completions' default, as OpenAI's
COMPLETIONS_MAX_TOKENS = 16
#: what a logprob of -inf is written as (JSON has no infinity; OpenAI's own floor)
LOGPROB_FLOOR = -9999.0

#: the session layer's field names → the request's
_FIELDS = {
    "": "messages",
    "tokens": "messages",
    "messages": "messages",
    "logprobs": "top_logprobs",
    "tool_choice": "tool_choice",
}


def _param(field: str) -> str:
    if field.startswith("config.response_format"):
        return "response_format"
    if field.startswith("config."):
        field = field.removeprefix("config.")
    return _FIELDS.get(field, field)


FINISH_REASONS = {
    "eos": "stop",
    "grammar_end": "stop",
    "stop": "stop",
    "stop_token": "stop",
    "cancelled": "stop",
    "max_tokens": "length",
    "context_full": "length",
    "tool_calls": "tool_calls",
}


def finish_reason(final: DecodeFinal | None, calls: bool) -> str:
    if calls:
        return "tool_calls"
    return FINISH_REASONS.get(final.stop_reason, "stop") if final is not None else "stop"


# -- requests → session inputs and decode options --------------------------------------------


def _content(message: ChatMessage, i: int) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise HttpError.invalid(
                f"content part type {part.type!r}: only text parts are served",
                f"messages[{i}].content[{j}].type",
            )
        texts.append(part.text)
    return "".join(texts)


def _arguments(value: str | dict[str, Any]) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _tools(tools: list[ToolIn] | None) -> tuple[ToolDefinition, ...]:
    return tuple(
        ToolDefinition(
            t.function.name,
            t.function.description,
            json.dumps(t.function.parameters, ensure_ascii=False) if t.function.parameters else "",
        )
        for t in tools or ()
    )


def chat_input(body: ChatRequest) -> ChatInput:
    """The request's messages and tools as the session layer's chat input."""
    messages = []
    for i, m in enumerate(body.messages):
        calls = tuple(
            ToolCall(c.id, c.function.name, _arguments(c.function.arguments), k)
            for k, c in enumerate(m.tool_calls or ())
        )
        messages.append(
            Message(
                role=m.role,
                content=_content(m, i),
                tool_calls=calls,
                tool_call_id=m.tool_call_id or "",
                name=m.name or "",
                thinking=m.reasoning_content or "",
            )
        )
    return ChatInput(tuple(messages), add_generation_prompt=True, tools=_tools(body.tools))


def _sampling(body: _Sampling, max_tokens: int | None, default_max: int) -> dict[str, object]:
    if body.n not in (None, 1):
        raise HttpError.invalid(f"n={body.n}: only n=1 is served", "n")
    values: dict[str, object] = {"max_tokens": default_max if max_tokens is None else max_tokens}
    for name in ("temperature", "top_p", "seed"):
        value = getattr(body, name)
        if value is not None:
            values[name] = value
    if body.stop is not None:
        values["stop"] = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop)
    if body.logit_bias:
        try:
            values["logit_bias"] = tuple(sorted((int(k), v) for k, v in body.logit_bias.items()))
        except ValueError:
            raise HttpError.invalid("logit_bias keys must be token ids", "logit_bias") from None
    return values


def chat_options(body: ChatRequest) -> DecodeOptions:
    """:raises HttpError / InvalidArgument: a field out of range, naming it."""
    values = _sampling(body, body.max_completion_tokens or body.max_tokens, UNBOUNDED)
    tools = _tools(body.tools)
    if tools:
        values["tools"] = tools
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        values["tool_choice"] = choice.function.name
    elif choice is not None:
        values["tool_choice"] = choice
    if body.parallel_tool_calls is not None:
        values["parallel_tool_calls"] = body.parallel_tool_calls
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise HttpError.invalid("json_schema format without json_schema", "response_format")
        schema = json.dumps(fmt.json_schema.schema_ or {"type": "object"}, ensure_ascii=False)
        values["response_format"] = ResponseFormat("json_schema", schema)
    elif fmt is not None and fmt.type == "json_object":
        values["response_format"] = ResponseFormat("json_object", "")
    if body.top_logprobs is not None and not body.logprobs:
        raise HttpError.invalid("top_logprobs needs logprobs: true", "top_logprobs")
    if body.logprobs:
        values["logprobs"] = body.top_logprobs or 0
    return DecodeOptions.from_fields(values)


def completion_options(body: CompletionRequest) -> DecodeOptions:
    if body.echo:
        raise HttpError.invalid("echo is not served", "echo")
    if body.suffix:
        raise HttpError.invalid("suffix (fill in the middle) is not served", "suffix")
    values = _sampling(body, body.max_tokens, COMPLETIONS_MAX_TOKENS)
    if body.logprobs is not None:
        values["logprobs"] = body.logprobs
    return DecodeOptions.from_fields(values)


def _session_name(request: Request, body: _Sampling) -> tuple[str | None, str]:
    name = request.headers.get(SESSION_ID_HEADER)
    if name:
        return name, SESSION_ID_HEADER
    if body.prompt_cache_key:
        return body.prompt_cache_key, "prompt_cache_key"
    return None, ""


async def _turn(
    ctx: HttpContext,
    request: Request,
    body: _Sampling,
    value: SessionInput,
    options: DecodeOptions,
) -> Turn:
    name, how = _session_name(request, body)
    return await start_turn(ctx.sessions, ctx.binder, body.model, value, options, name, how)


# -- responses ---------------------------------------------------------------------------------


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else LOGPROB_FLOOR


def chat_logprobs(logprobs: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.text,
                "logprob": _logprob(lp.logprob),
                "bytes": list(lp.piece),
                "top_logprobs": [
                    {"token": t.text, "logprob": _logprob(t.logprob), "bytes": list(t.piece)}
                    for t in lp.top
                ],
            }
            for lp in logprobs
        ]
    }


def completion_logprobs(logprobs: list[TokenLogprob]) -> dict[str, Any]:
    """The legacy completions shape: parallel lists."""
    return {
        "tokens": [lp.text for lp in logprobs],
        "token_logprobs": [_logprob(lp.logprob) for lp in logprobs],
        "top_logprobs": [{t.text: _logprob(t.logprob) for t in lp.top} for lp in logprobs],
        "text_offset": [],
    }


def _call(call: ToolCall) -> dict[str, Any]:
    return {
        "index": call.index,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def usage(turn: Turn, final: DecodeFinal | None) -> dict[str, Any]:
    completion = final.completion_tokens if final is not None else 0
    prompt = turn.diagnostics.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": turn.prefix.reused},
        "completion_tokens_details": {
            "reasoning_tokens": final.thinking_tokens if final is not None else 0
        },
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


async def _stream_errors(
    chunks: AsyncIterator[bytes], turn: Turn, request: Request
) -> AsyncIterator[bytes]:
    """``chunks``; a failure after the stream started is one last ``data: {"error": ...}``
    event (the status line has gone), and the Decode is always closed."""
    try:
        async for chunk in chunks:
            yield chunk
    except RemoteError as exc:
        yield _sse(openai_body(api_error(exc, _param)))
    finally:
        await turn.close()


def _ids(prefix: str) -> tuple[str, int]:
    return f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time())


# -- routes --------------------------------------------------------------------------------------


@router.get("/v1/models")
async def list_models(ctx: Ctx) -> dict[str, Any]:
    """The served model first, then what is loaded, then what the models directory holds."""
    names: list[str] = []
    if ctx.served_model:
        names.append(ctx.served_model)
    names += [m.spec.facts.name for m in ctx.sessions.loaded_models()]
    if ctx.models_dir.is_dir():
        for entry in sorted(ctx.models_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            names.append(entry.stem if entry.suffix == ".gguf" else entry.name)
    unique = list(dict.fromkeys(names))
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": 0, "owned_by": "modeld"} for n in unique],
    }


@router.get("/v1/models/{model}")
async def get_model(model: str, ctx: Ctx) -> dict[str, Any]:
    spec = await resolve_model(ctx.sessions, model)
    return {"id": model, "object": "model", "created": 0, "owned_by": "modeld",
            "context_length": spec.facts.context_length}  # fmt: skip


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request, ctx: Ctx) -> Response:
    with field_names({}), _params():
        options = chat_options(body)
        turn = await _turn(ctx, request, body, chat_input(body), options)
    headers = turn.diagnostics.headers()
    completion_id, created = _ids("chatcmpl")
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _chat_chunks(turn, completion_id, created, body.model, include_usage)
        return StreamingResponse(
            _stream_errors(chunks, turn, request), media_type="text/event-stream", headers=headers
        )
    text: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    logprobs: list[TokenLogprob] = []
    final: DecodeFinal | None = None
    async for step in _steps(turn):
        text.append(step.text)
        thinking.append(step.thinking)
        calls.extend(step.tool_calls)
        logprobs.extend(step.logprobs)
        final = step.final or final
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = [{k: v for k, v in _call(c).items() if k != "index"} for c in calls]
    elif message["content"] is None:
        message["content"] = ""
    if any(thinking):
        message["reasoning_content"] = "".join(thinking)
    payload = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": chat_logprobs(logprobs) if options.logprobs is not None else None,
                "finish_reason": finish_reason(final, bool(calls)),
            }
        ],
        "usage": usage(turn, final),
        "system_fingerprint": None,
        "modeld": turn.diagnostics.body(),
    }
    return JSONResponse(payload, headers=headers)


class _params:
    """Errors raised while reading a request name the request's own fields."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, RemoteError) and exc.metadata.get("field"):
            exc.metadata["field"] = _param(exc.metadata["field"])


async def _steps(turn: Turn) -> AsyncIterator[TapedStep]:
    with _params():
        async for step in turn.steps():
            yield step


async def _chat_chunks(
    turn: Turn, completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        choice.update(extra)
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [choice],
        }

    yield _sse(chunk({"role": "assistant", "content": ""}))
    final, calls = None, False
    async for step in _steps(turn):
        delta: dict[str, Any] = {}
        if step.thinking:
            delta["reasoning_content"] = step.thinking
        if step.text:
            delta["content"] = step.text
        if step.tool_calls:
            calls = True
            delta["tool_calls"] = [_call(c) for c in step.tool_calls]
        extra = {"logprobs": chat_logprobs(list(step.logprobs))} if step.logprobs else {}
        if delta or extra:
            yield _sse(chunk(delta, **extra))
        final = step.final or final
    last = chunk({}, finish_reason=finish_reason(final, calls))
    last["modeld"] = turn.diagnostics.body()
    yield _sse(last)
    if include_usage:
        tail = chunk({})
        tail["choices"] = []
        tail["usage"] = usage(turn, final)
        yield _sse(tail)
    yield _sse("[DONE]")


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, ctx: Ctx) -> Response:
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise HttpError.invalid("one prompt per request", "prompt")
        prompt = prompt[0]
    with field_names({"": "prompt", "tokens": "prompt", "text": "prompt"}), _params():
        options = completion_options(body)
        turn = await _turn(ctx, request, body, TextInput(prompt), options)
    headers = turn.diagnostics.headers()
    completion_id, created = _ids("cmpl")

    def payload(text: str, reason: str | None, logprobs: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}],
        }

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        async def chunks() -> AsyncIterator[bytes]:
            final = None
            async for step in _steps(turn):
                lps = completion_logprobs(list(step.logprobs)) if step.logprobs else None
                if step.text or lps:
                    yield _sse(payload(step.text, None, lps))
                final = step.final or final
            last = payload("", finish_reason(final, False), None)
            last["modeld"] = turn.diagnostics.body()
            yield _sse(last)
            if include_usage:
                tail = payload("", None, None)
                tail["choices"], tail["usage"] = [], usage(turn, final)
                yield _sse(tail)
            yield _sse("[DONE]")

        return StreamingResponse(
            _stream_errors(chunks(), turn, request), media_type="text/event-stream", headers=headers
        )
    text: list[str] = []
    logprobs: list[TokenLogprob] = []
    final: DecodeFinal | None = None
    async for step in _steps(turn):
        text.append(step.text)
        logprobs.extend(step.logprobs)
        final = step.final or final
    result = payload(
        "".join(text),
        finish_reason(final, False),
        completion_logprobs(logprobs) if options.logprobs is not None else None,
    )
    result["usage"] = usage(turn, final)
    result["modeld"] = turn.diagnostics.body()
    return JSONResponse(result, headers=headers)


def _embed_inputs(
    raw: str | list[str] | list[int] | list[list[int]],
) -> tuple[str | tuple[int, ...], ...]:
    """OpenAI's ``input``: a text, texts, one token list, or token lists."""
    if isinstance(raw, str):
        return (raw,)
    inputs: list[str | tuple[int, ...]] = []
    ids: list[int] = []
    for item in raw:
        if isinstance(item, int):
            ids.append(item)
        elif isinstance(item, str):
            inputs.append(item)
        else:
            inputs.append(tuple(item))
    return (tuple(ids),) if ids else tuple(inputs)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, ctx: Ctx) -> Response:
    inputs = _embed_inputs(body.input)
    spec = await resolve_model(ctx.sessions, body.model)
    with field_names({"inputs": "input", "": "input"}):
        try:
            result = await ctx.sessions.embed(spec, EmbedRequest(inputs=inputs))
        except RemoteError as exc:
            field = exc.metadata.get("field", "")
            if field.startswith("inputs"):
                exc.metadata["field"] = "input" + field.removeprefix("inputs")
            raise
    vectors = np.asarray(result.vectors, dtype=np.float32)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise HttpError.invalid(
            f"dimensions={body.dimensions}: this model's vectors have {vectors.shape[1]}",
            "dimensions",
        )
    data = []
    for i, vector in enumerate(vectors):
        embedding: Any
        if body.encoding_format == "base64":
            embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    total = result.usage.total_tokens
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
    )
