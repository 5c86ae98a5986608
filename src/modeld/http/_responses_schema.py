"""The OpenAI Responses request body (``POST /v1/responses``) as pydantic models: a field of the
wrong type is a 400 naming it (``_errors``). Unknown fields are accepted and ignored, as the
SDKs send fields a local server has no use for (``user``, ``metadata``, ``reasoning``, ...)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "InputMessage",
    "NamedFunction",
    "ResponsesRequest",
    "TextFormat",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ContentPart(_Body):
    """``input_text`` / ``output_text`` (text); other kinds (images, files) are refused."""

    type: str
    text: str | None = None


class InputMessage(_Body):
    """``{"role", "content"}`` (``type: "message"`` optional, as in the SDK's easy form)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Body):
    """A tool call the model made in an earlier turn, sent back as history."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = "{}"
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Body):
    """The result of a tool call, answering ``call_id``."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem


class FunctionTool(_Body):
    """Responses' flat function tool (not chat's ``{"function": {...}}``)."""

    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Body):
    type: Literal["function"] = "function"
    name: str


class TextFormat(_Body):
    """``text.format``: ``text`` | ``json_object`` | ``json_schema`` (name, schema, strict)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Body):
    format: TextFormat | None = None


class ResponsesRequest(_Body):
    model: str
    input: str | list[InputMessage | FunctionCallItem | FunctionCallOutputItem]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    store: bool = True
    previous_response_id: str | None = None
    stream: bool = False
    #: OpenAI's name for a conversation's cache: here, the name of its session
    prompt_cache_key: str | None = None
