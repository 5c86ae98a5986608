"""Chat input: domain types, the sandboxed chat-template renderer, the fallback rendering for
templates without tools, tool-call formats and their streaming parser, and thinking sections.

See the README's "Tools and chat templates".
"""

from modeld.chat._fallback import apply_fallback, has_tool_role, renders_tools, tools_text
from modeld.chat._template import compile_template, render_template
from modeld.chat._thinking import (
    THINK_END,
    THINK_START,
    ThinkingSplitter,
    prompt_opens_thinking,
)
from modeld.chat._tool_formats import (
    FORMATS,
    ParsedDelta,
    ToolCallFormat,
    ToolCallParser,
    detect_format,
    new_call_id,
)
from modeld.chat._types import (
    MAX_TOOLS,
    ChatInput,
    Message,
    ToolCall,
    ToolDefinition,
    check_tools,
    json_object,
)

__all__ = [
    "FORMATS",
    "MAX_TOOLS",
    "THINK_END",
    "THINK_START",
    "ChatInput",
    "Message",
    "ParsedDelta",
    "ThinkingSplitter",
    "ToolCall",
    "ToolCallFormat",
    "ToolCallParser",
    "ToolDefinition",
    "apply_fallback",
    "check_tools",
    "compile_template",
    "detect_format",
    "has_tool_role",
    "json_object",
    "new_call_id",
    "prompt_opens_thinking",
    "render_template",
    "renders_tools",
    "tools_text",
]
