"""OpenAI's Responses API: ``POST /v1/responses`` (streamed or not), ``GET`` and ``DELETE
/v1/responses/{id}``, with ``previous_response_id`` continuing the live session that produced
that response.

How a continuation finds its KV, in order (the ``modeld.continued`` field says which):

* ``live``: every stored response names the session it ended on in the binder's name map
  (``response:<id>``); the continuation binds that session by name, EnsurePrefix finds the
  whole earlier conversation on its tape, and only the new input is prefilled. When the turn
  ends the name moves on to the new response: the session's tape no longer ends at the old
  one, so a second continuation of the old response (a fork) is bound like any new prompt and
  starts from a KV copy of the shared prefix instead of cutting the first branch's tape short.
* ``snapshot``: the session is gone (closed by the idle budgets, or the daemon restarted):
  a new session is restored from the snapshot taken when the response was stored.
* ``rerender``: no usable snapshot (evicted by the snapshot budget, another runtime, another
  model asked for): the stored history is rendered again into a new session. Correct, not warm.

Each stored response is snapshotted right away, before the response (or its stream's
``response.completed``) is answered: a response the client has seen survives a restart. The
snapshot holds only the tape's KV (a few MB on Gemma 3 270M; milliseconds, reported in
``modeld.snapshot_ms``). The rows live in SQLite (``_responses_store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modeld.chat._types import ChatInput, Message, ToolCall, ToolDefinition
from modeld.http._app import Ctx, HttpContext
from modeld.http._errors import ApiError, HttpError, api_error
from modeld.http._responses_schema import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputMessage,
    NamedFunction,
    ResponsesRequest,
)
from modeld.http._responses_store import ResponseStore, StoredResponse
from modeld.http._turn import Turn, resolve_model, start_turn
from modeld.sessions._turns import TapedStep
from modeld.sessions._types import DecodeOptions
from modeld.structured._formats import ResponseFormat
from modeldconn._errors import RemoteError, SnapshotMismatch, SnapshotNotFound
from modeldconn._types import DecodeFinal

__all__ = ["router"]

log = logging.getLogger("modeld.http")

router = APIRouter()

SESSION_ID_HEADER = "x-session-id"
#: an absent max_output_tokens: until EOS or a full context
UNBOUNDED = 1 << 31
#: where the rows live, under the data root
STORE_PATH = Path("http") / "responses.sqlite3"
#: stop reasons that leave a response ``incomplete`` (OpenAI: ``max_output_tokens``)
_INCOMPLETE = frozenset({"max_tokens", "context_full"})

#: the session layer's field names → the request's
_FIELDS = {
    "": "input",
    "tokens": "input",
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "tool_choice": "tool_choice",
}


def _param(field: str) -> str:
    if field.startswith("config.response_format") or field.startswith("response_format"):
        return "text.format"
    field = field.removeprefix("config.")
    return _FIELDS.get(field, field)


@contextlib.contextmanager
def _named() -> Iterator[None]:
    """A typed error names the request's own field (``input``, ``max_output_tokens``)."""
    try:
        yield
    except RemoteError as error:
        if "field" in error.metadata:
            error.metadata["field"] = _param(error.metadata["field"])
        raise


def _not_found(response_id: str, param: str | None) -> HttpError:
    code = "previous_response_not_found" if param else "response_not_found"
    message = f"no stored response {response_id!r}"
    return HttpError(ApiError(404, message, "not_found_error", code, param))


def _store(request: Request, ctx: HttpContext) -> ResponseStore:
    """The app's store, opened on first use at ``<data root>/http/responses.sqlite3``."""
    store: ResponseStore | None = getattr(request.app.state, "responses_store", None)
    if store is None:
        store = ResponseStore(ctx.models_dir.parent / STORE_PATH)
        request.app.state.responses_store = store
    return store


def _session_name(response_id: str) -> str:
    """The binder's name for the session a stored response ended on."""
    return f"response:{response_id}"


def _hex_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- input items → chat messages (the stored, re-renderable form) -----------------------------


def _text(content: str | list[ContentPart], where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type not in ("input_text", "output_text", "text") or part.text is None:
            raise HttpError.invalid(
                f"content part type {part.type!r}: only text parts are served",
                f"{where}[{j}].type",
            )
        texts.append(part.text)
    return "".join(texts)


def _message(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {
        "role": role,
        "content": content,
        "tool_calls": extra.get("tool_calls", []),
        "tool_call_id": extra.get("tool_call_id", ""),
        "name": extra.get("name", ""),
        "thinking": extra.get("thinking", ""),
    }


def input_messages(body: ResponsesRequest, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``history`` (stored messages) followed by the request's input items, as chat messages:
    ``developer`` is a system message; function_call items join the assistant message before
    them (one assistant turn); a function_call_output is a ``tool`` message.

    :raises HttpError: a non-text content part (400 naming it)."""
    messages = [dict(m) for m in history]
    if isinstance(body.input, str):
        messages.append(_message("user", body.input))
        return messages
    names: dict[str, str] = {
        c["id"]: c["name"] for m in messages for c in m["tool_calls"] if c.get("id")
    }
    for i, item in enumerate(body.input):
        if isinstance(item, InputMessage):
            role = "system" if item.role == "developer" else item.role
            messages.append(_message(role, _text(item.content, f"input[{i}].content")))
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "name": item.name, "arguments": item.arguments}
            names[item.call_id] = item.name
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last["tool_calls"] = [*last["tool_calls"], call]
            else:
                messages.append(_message("assistant", "", tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            output = _text(item.output, f"input[{i}].output")
            messages.append(
                _message(
                    "tool", output, tool_call_id=item.call_id, name=names.get(item.call_id, "")
                )
            )
    return messages


def _tools(body: ResponsesRequest) -> tuple[ToolDefinition, ...]:
    return tuple(
        ToolDefinition(
            t.name,
            t.description or "",
            json.dumps(t.parameters, ensure_ascii=False) if t.parameters else "",
        )
        for t in body.tools or ()
    )


def chat_input(body: ResponsesRequest, messages: list[dict[str, Any]]) -> ChatInput:
    """The conversation to render: ``instructions`` (a system message first; a continuation
    takes the request's own, as OpenAI carries no instructions over), then ``messages``."""
    rendered = []
    if body.instructions:
        rendered.append(Message("system", body.instructions))
    for m in messages:
        calls = tuple(
            ToolCall(c.get("id", ""), c["name"], c.get("arguments", "{}"), k)
            for k, c in enumerate(m["tool_calls"])
        )
        rendered.append(
            Message(
                role=m["role"],
                content=m["content"],
                tool_calls=calls,
                tool_call_id=m["tool_call_id"],
                name=m["name"],
                thinking=m["thinking"],
            )
        )
    return ChatInput(tuple(rendered), add_generation_prompt=True, tools=_tools(body))


def decode_options(body: ResponsesRequest) -> DecodeOptions:
    """:raises HttpError / InvalidArgument: a field out of range, naming it."""
    values: dict[str, object] = {"max_tokens": body.max_output_tokens or UNBOUNDED}
    for name in ("temperature", "top_p", "parallel_tool_calls"):
        value = getattr(body, name)
        if value is not None:
            values[name] = value
    tools = _tools(body)
    if tools:
        values["tools"] = tools
    choice = body.tool_choice
    if isinstance(choice, NamedFunction):
        values["tool_choice"] = choice.name
    elif choice is not None:
        values["tool_choice"] = choice
    fmt = body.text.format if body.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        schema = json.dumps(fmt.schema_ or {"type": "object"}, ensure_ascii=False)
        values["response_format"] = ResponseFormat("json_schema", schema)
    elif fmt is not None and fmt.type == "json_object":
        values["response_format"] = ResponseFormat("json_object", "")
    with _named():
        return DecodeOptions.from_fields(values)


# -- the response object -------------------------------------------------------------------


class _Output:
    """What a turn produced, gathered step by step: output items in order, and the assistant
    message that goes into the stored history."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[dict[str, str]] = []
        self.final: DecodeFinal | None = None
        self.tape_tokens = 0
        self._message: dict[str, Any] | None = None  #: the message item being written

    def open_message(self) -> tuple[dict[str, Any], bool]:
        """The message item text goes to; True if it was just opened."""
        if self._message is not None:
            return self._message, False
        self._message = {
            "type": "message",
            "id": _hex_id("msg"),
            "status": "in_progress",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}],
        }
        self.items.append(self._message)
        return self._message, True

    def close_message(self) -> dict[str, Any] | None:
        """The message item just finished (None: none was open)."""
        message, self._message = self._message, None
        if message is not None:
            message["status"] = "completed"
        return message

    def add_text(self, text: str) -> None:
        message, _ = self.open_message()
        message["content"][0]["text"] += text
        self.text.append(text)

    def add_call(self, call: ToolCall) -> dict[str, Any]:
        self.close_message()
        call_id = call.id or _hex_id("call")
        item = {
            "type": "function_call",
            "id": _hex_id("fc"),
            "call_id": call_id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
        self.items.append(item)
        self.calls.append({"id": call_id, "name": call.name, "arguments": call.arguments})
        return item

    def take(self, step: TapedStep) -> None:
        """Bookkeeping every step needs, streamed or not."""
        self.thinking.append(step.thinking)
        self.final = step.final or self.final
        self.tape_tokens = step.tape_tokens or self.tape_tokens

    def history_message(self) -> dict[str, Any]:
        return _message(
            "assistant",
            "".join(self.text),
            tool_calls=self.calls,
            thinking="".join(self.thinking),
        )


def _usage(turn: Turn, final: DecodeFinal | None) -> dict[str, Any]:
    output = final.completion_tokens if final is not None else 0
    prompt = turn.diagnostics.prompt_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": turn.prefix.reused},
        "output_tokens": output,
        "output_tokens_details": {
            "reasoning_tokens": final.thinking_tokens if final is not None else 0
        },
        "total_tokens": prompt + output,
    }


def _response(
    body: ResponsesRequest, response_id: str, created: int, status: str, output: _Output | None
) -> dict[str, Any]:
    """The Response object; ``output`` None: the skeleton of ``response.created``."""
    text_format: dict[str, Any] = {"type": "text"}
    fmt = body.text.format if body.text is not None else None
    if fmt is not None:
        text_format = fmt.model_dump(by_alias=True, exclude_none=True)
    choice = body.tool_choice
    incomplete = None
    if output is not None and output.final is not None and status == "incomplete":
        incomplete = {"reason": "max_output_tokens"}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": body.model,
        "output": output.items if output is not None else [],
        "parallel_tool_calls": bool(body.parallel_tool_calls),
        "previous_response_id": body.previous_response_id,
        "store": body.store,
        "temperature": body.temperature,
        "text": {"format": text_format},
        "tool_choice": choice.model_dump()
        if isinstance(choice, NamedFunction)
        else choice or "auto",
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
        "top_p": body.top_p,
        "truncation": "disabled",
        "usage": None,
        "metadata": {},
    }


def _status(output: _Output) -> str:
    final = output.final
    if final is not None and final.stop_reason in _INCOMPLETE and not output.calls:
        return "incomplete"
    return "completed"


# -- a turn, start to stored -----------------------------------------------------------------


class _Exchange:
    """One ``POST /v1/responses``: the conversation, its session binding, and how it ended."""

    def __init__(
        self, ctx: HttpContext, store: ResponseStore, body: ResponsesRequest, request: Request
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.body = body
        self.request = request
        self.id = _hex_id("resp")
        self.created = int(time.time())
        self.messages: list[dict[str, Any]] = []
        self.previous: StoredResponse | None = None
        self.previous_name: str | None = None
        self.continued: str | None = None  #: live | snapshot | rerender (continuations only)
        self.snapshot_id: str | None = None
        self.snapshot_ms: float | None = None

    async def start(self) -> Turn:
        """Look the previous response up, find or restore its session, start the turn.

        :raises HttpError: an unknown previous_response_id (404), a non-text part (400).
        :raises RemoteError: see ``start_turn``."""
        body, ctx = self.body, self.ctx
        history: list[dict[str, Any]] = []
        name: str | None = None
        how = "previous_response_id"
        if body.previous_response_id:
            previous = await self.store.get(body.previous_response_id)
            if previous is None:
                raise _not_found(body.previous_response_id, "previous_response_id")
            self.previous, history = previous, previous.messages
            if previous.model == body.model:
                name = self.previous_name = _session_name(previous.id)
                self.continued = await self._find_session(previous, name)
            else:
                self.continued = "rerender"  # another model's KV is no use
        else:
            header = self.request.headers.get(SESSION_ID_HEADER)
            if header:
                name, how = header, SESSION_ID_HEADER
            elif body.prompt_cache_key:
                name, how = body.prompt_cache_key, "prompt_cache_key"
        self.messages = input_messages(body, history)
        options = decode_options(body)
        with _named():
            return await start_turn(
                ctx.sessions,
                ctx.binder,
                body.model,
                chat_input(body, self.messages),
                options,
                name,
                how,
            )

    async def _find_session(self, previous: StoredResponse, name: str) -> str:
        if self.ctx.binder.knows(name):
            return "live"
        if previous.snapshot_id is None:
            return "rerender"
        spec = await resolve_model(self.ctx.sessions, previous.model)
        try:
            await self.ctx.binder.restore(spec, previous.snapshot_id, name)
        except (SnapshotNotFound, SnapshotMismatch) as exc:
            log.info("response %s: its snapshot is not usable (%s); re-rendering", previous.id, exc)
            return "rerender"
        return "snapshot"

    async def finish(self, turn: Turn, output: _Output) -> dict[str, Any]:
        """The turn is over (its session released): name the session after this response,
        snapshot it and store the row (``store``), and return the Response object."""
        output.close_message()
        handle = turn.binding.handle
        if self.body.store:
            self.ctx.binder.rename(self.previous_name, _session_name(self.id), handle)
            await self._snapshot(handle, output)
        response = _response(self.body, self.id, self.created, _status(output), output)
        response["usage"] = _usage(turn, output.final)
        response["modeld"] = {
            **turn.diagnostics.body(),
            "continued": self.continued,
            "session": handle,
            "snapshot_id": self.snapshot_id,
            "snapshot_ms": self.snapshot_ms,
        }
        if self.body.store:
            await self.store.put(
                StoredResponse(
                    id=self.id,
                    model=self.body.model,
                    created_at=self.created,
                    response=response,
                    messages=[*self.messages, output.history_message()],
                    session=handle,
                    tape_tokens=output.tape_tokens,
                    snapshot_id=self.snapshot_id,
                )
            )
        return response

    async def _snapshot(self, handle: str, output: _Output) -> None:
        """Right away, not in the background: the client may stop the daemon as soon as it
        has the response, and a background snapshot would race that. A failure (disk reserve,
        the session closed or taken by the next request meanwhile) is logged and leaves the
        response without one: its continuation re-renders after a restart."""
        began = time.perf_counter()
        try:
            self.snapshot_id, _, tape = await self.ctx.sessions.snapshot(handle)
        except RemoteError as exc:
            log.warning("response %s: no snapshot of session %s: %s", self.id, handle, exc)
            return
        self.snapshot_ms = round((time.perf_counter() - began) * 1000, 2)
        output.tape_tokens = tape


# -- routes ------------------------------------------------------------------------------------


@router.post("/v1/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request, ctx: Ctx) -> Response:
    """A Response (or its SSE events). Errors: 404 ``previous_response_not_found``; 400 naming
    the field; every typed error of ``start_turn``."""
    exchange = _Exchange(ctx, _store(request, ctx), body, request)
    turn = await exchange.start()
    headers = turn.diagnostics.headers()
    if body.stream:
        return StreamingResponse(
            _events(exchange, turn), media_type="text/event-stream", headers=headers
        )
    output = _Output()
    try:
        with _named():
            async for step in turn.steps():
                output.take(step)
                if step.text:
                    output.add_text(step.text)
                for call in step.tool_calls:
                    output.add_call(call)
    finally:
        await turn.close()
    return JSONResponse(await exchange.finish(turn, output), headers=headers)


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _events(exchange: _Exchange, turn: Turn) -> AsyncIterator[bytes]:
    """OpenAI's event sequence: created, in_progress; per message item output_item.added,
    content_part.added, output_text.delta…, output_text.done, content_part.done,
    output_item.done; per function call output_item.added, function_call_arguments.delta,
    .done, output_item.done; then completed (or incomplete). A failure after the stream
    started is an ``error`` event."""
    body = exchange.body
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return _sse(kind, data)

    output = _Output()

    def close_message() -> Iterator[bytes]:
        at = len(output.items) - 1
        message = output.close_message()
        if message is None:
            return
        part = message["content"][0]
        ids = {"item_id": message["id"], "output_index": at, "content_index": 0}
        yield event("response.output_text.done", **ids, text=part["text"], logprobs=[])
        yield event("response.content_part.done", **ids, part=part)
        yield event("response.output_item.done", output_index=at, item=message)

    skeleton = _response(body, exchange.id, exchange.created, "in_progress", None)
    try:
        yield event("response.created", response=skeleton)
        yield event("response.in_progress", response=skeleton)
        with _named():
            async for step in turn.steps():
                output.take(step)
                if step.text:
                    message, opened = output.open_message()
                    at = len(output.items) - 1
                    if opened:
                        empty = {**message, "content": []}
                        yield event("response.output_item.added", output_index=at, item=empty)
                        yield event(
                            "response.content_part.added",
                            item_id=message["id"],
                            output_index=at,
                            content_index=0,
                            part={"type": "output_text", "text": "", "annotations": []},
                        )
                    output.add_text(step.text)
                    yield event(
                        "response.output_text.delta",
                        item_id=message["id"],
                        output_index=at,
                        content_index=0,
                        delta=step.text,
                        logprobs=[],
                    )
                for call in step.tool_calls:
                    for chunk in close_message():
                        yield chunk
                    item = output.add_call(call)
                    at = len(output.items) - 1
                    added = {**item, "arguments": "", "status": "in_progress"}
                    ids = {"item_id": item["id"], "output_index": at}
                    yield event("response.output_item.added", output_index=at, item=added)
                    yield event(
                        "response.function_call_arguments.delta", **ids, delta=call.arguments
                    )
                    yield event(
                        "response.function_call_arguments.done",
                        **ids,
                        name=call.name,
                        arguments=call.arguments,
                    )
                    yield event("response.output_item.done", output_index=at, item=item)
        for chunk in close_message():
            yield chunk
        await turn.close()
        response = await exchange.finish(turn, output)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        yield event(kind, response=response)
    except RemoteError as exc:
        error = api_error(exc, _param)
        yield event("error", code=error.code, message=error.message, param=error.param)
    finally:
        await turn.close()


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request, ctx: Ctx) -> Response:
    """The stored Response object. :raises HttpError: 404 ``response_not_found``."""
    row = await _store(request, ctx).get(response_id)
    if row is None:
        raise _not_found(response_id, None)
    return JSONResponse(row.response)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request, ctx: Ctx) -> Response:
    """Remove the row and its snapshot file (nothing else refers to it: each stored response
    has a snapshot of its own). The live session, if any, stays open for whatever prompt it
    serves next and is closed by the idle budgets like any other; it just no longer answers to
    this response's name. :raises HttpError: 404 ``response_not_found``."""
    row = await _store(request, ctx).delete(response_id)
    if row is None:
        raise _not_found(response_id, None)
    ctx.binder.forget(_session_name(response_id))
    if row.snapshot_id is not None:
        # SnapshotStore names its files <id>.snap and has no delete of its own
        snap = ctx.sessions.snapshots.directory / f"{row.snapshot_id}.snap"
        await asyncio.to_thread(snap.unlink, missing_ok=True)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
