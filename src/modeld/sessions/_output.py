"""A Decode's streamed text split into its channels: thinking, answer text and tool calls.

The text (after stop strings) first meets the thinking splitter (a ``<think>...</think>``
section the model writes first, or that the prompt left open); the answer then meets the tool
call parser of the Decode's format, which swallows call text and emits complete calls. Both
hold back text that could still be a marker, so nothing is streamed on the wrong side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modeld.chat._thinking import ThinkingSplitter
from modeld.chat._tool_formats import ToolCallParser
from modeld.chat._types import ToolCall, ToolDefinition

__all__ = ["DecodeOutput", "OutputPiece"]


@dataclass
class OutputPiece:
    text: str = ""
    thinking: str = ""
    calls: list[ToolCall] = field(default_factory=list)


class DecodeOutput:
    """``split_thinking``: route a thinking section to ``thinking`` (else it stays text);
    ``thinking_open``: the prompt ends inside one; ``tool_format``: the call syntax to parse
    ("" when no tool may be called)."""

    def __init__(
        self,
        *,
        split_thinking: bool,
        thinking_open: bool,
        tool_format: str,
        tools: tuple[ToolDefinition, ...],
    ) -> None:
        self._splitter = ThinkingSplitter(open_at_start=thinking_open) if split_thinking else None
        self._parser = ToolCallParser(tool_format, tools) if tool_format else None
        self._answer = ""  # the answer text fed to the parser so far (for a lazy grammar)
        self.calls = 0

    @property
    def in_thinking(self) -> bool:
        return self._splitter is not None and self._splitter.in_thinking

    @property
    def thinking_end(self) -> str:
        return self._splitter.end if self._splitter is not None else ""

    @property
    def in_call(self) -> bool:
        return self._parser is not None and self._parser.in_call

    def call_text(self) -> str:
        """The text of the call in progress, from its marker (what a lazy grammar switched on
        now must be fed first); "" outside a call."""
        if self._parser is None or not self._parser.in_call:
            return ""
        fmt = self._parser.format
        at = self._answer.rfind(fmt.start)
        if at >= 0:
            return self._answer[at:]
        return self._answer.lstrip() if fmt.bare_json_start else ""

    def feed(self, text: str) -> OutputPiece:
        if self._splitter is not None:
            thinking, answer = self._splitter.feed(text)
        else:
            thinking, answer = "", text
        return self._answer_piece(thinking, answer, final=False)

    def finish(self) -> OutputPiece:
        thinking, answer = self._splitter.flush() if self._splitter is not None else ("", "")
        return self._answer_piece(thinking, answer, final=True)

    def _answer_piece(self, thinking: str, answer: str, *, final: bool) -> OutputPiece:
        if self._parser is None:
            return OutputPiece(answer, thinking)
        self._answer += answer
        delta = self._parser.feed(answer) if answer else None
        piece = OutputPiece(delta.text if delta else "", thinking, delta.calls if delta else [])
        if final:
            rest = self._parser.finish()
            piece.text += rest.text
            piece.calls += rest.calls
        self.calls += len(piece.calls)
        return piece
