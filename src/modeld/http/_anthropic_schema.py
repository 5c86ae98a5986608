"""The Anthropic Messages request bodies modeld reads, as pydantic models: a field of the wrong
type, a content block of an unknown type, a missing ``max_tokens`` are a 400 naming the field
(``_errors``). Unknown fields are accepted and ignored (Claude Code and the SDKs send fields a
local server has no use for: ``service_tier``, ``container``, ``betas``...)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Block",
    "CacheControl",
    "CountTokensRequest",
    "MessageIn",
    "MessagesRequest",
    "TextBlock",
    "ThinkingBlock",
    "ThinkingConfig",
    "ToolChoice",
    "ToolIn",
    "ToolResultBlock",
    "ToolUseBlock",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class CacheControl(_Body):
    """A breakpoint: the request's prefix up to the end of the block carrying it is stable."""

    type: Literal["ephemeral"] = "ephemeral"
    ttl: str | None = None  #: "5m" | "1h" at Anthropic; here the session budgets decide


class TextBlock(_Body):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class ThinkingBlock(_Body):
    """An earlier assistant turn's thinking (rendered as the template's reasoning_content)."""

    type: Literal["thinking"]
    thinking: str
    signature: str = ""
    cache_control: CacheControl | None = None


class RedactedThinkingBlock(_Body):
    """Another provider's encrypted thinking: nothing a local model can read; dropped."""

    type: Literal["redacted_thinking"]
    data: str = ""
    cache_control: CacheControl | None = None


class ToolUseBlock(_Body):
    """An assistant's tool call."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    cache_control: CacheControl | None = None


class ToolResultBlock(_Body):
    """A user turn's answer to a tool call: content a string or text blocks."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] = ""
    is_error: bool = False
    cache_control: CacheControl | None = None


Block = Annotated[
    TextBlock | ThinkingBlock | RedactedThinkingBlock | ToolUseBlock | ToolResultBlock,
    Field(discriminator="type"),
]


class MessageIn(_Body):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolIn(_Body):
    """A client tool. Anthropic's server tools (``type`` ``bash_20250124``, ``web_search_...``)
    are refused: nothing here runs them."""

    name: str
    description: str = ""
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class ToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None  #: type "tool": the tool to call
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Body):
    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=1)


class _Prompt(_Body):
    """What count_tokens and a message share: everything that is rendered into the prompt."""

    model: str
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    #: automatic caching: a breakpoint on the last block of the last message
    cache_control: CacheControl | None = None


class CountTokensRequest(_Prompt):
    pass


class MessagesRequest(_Prompt):
    max_tokens: int = Field(ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None
