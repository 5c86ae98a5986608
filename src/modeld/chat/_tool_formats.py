"""Tool-call syntaxes: what each model family writes to call a tool, how the format is picked
from a chat template, and a streaming parser that turns generated text into typed calls.

The syntaxes (exactly these; the decode side's grammar enforces the same):

- ``hermes`` (Hermes, Qwen 2.5/3):
  ``<tool_call>\\n{"name": NAME, "arguments": OBJ}\\n</tool_call>``, whitespace around the
  JSON optional, one block per call.
- ``llama3`` (Llama 3.1+ JSON calls): optionally ``<|python_tag|>``, then
  ``{"name": NAME, "parameters": OBJ}`` (``"arguments"`` accepted too). A call is the *whole*
  output from its first non-space character; several are separated by ``;`` or newlines.
- ``mistral``: ``[TOOL_CALLS]`` then a JSON array ``[{"name": NAME, "arguments": OBJ}, ...]``.
- ``generic`` (modeld's, written by the fallback rendering for templates without tools):
  ``<tool_call>{"name": NAME, "arguments": OBJ}</tool_call>``; the same markers as ``hermes`` on
  purpose, so a Hermes-trained model and the fallback read alike.

A parsed call's ``arguments`` are re-serialised: ``json.dumps(obj, ensure_ascii=False,
separators=(",", ":"))`` (compact, non-ASCII as is, keys in the model's order).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from modeld.chat._types import ToolCall, ToolDefinition

__all__ = [
    "FORMATS",
    "ParsedDelta",
    "ToolCallFormat",
    "ToolCallParser",
    "detect_format",
    "new_call_id",
]


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    #: the text that begins a call (the lazy grammar's trigger)
    start: str
    #: the text that ends one call ("" where the JSON value's own end ends it)
    end: str
    #: llama3 only: a call may also begin with a bare ``{`` as the output's first non-space char
    bare_json_start: bool = False
    #: the key holding the arguments ("parameters" for llama3; "arguments" also accepted)
    arguments_key: str = "arguments"


FORMATS: dict[str, ToolCallFormat] = {
    "hermes": ToolCallFormat("hermes", "<tool_call>", "</tool_call>"),
    "llama3": ToolCallFormat(
        "llama3", "<|python_tag|>", "", bare_json_start=True, arguments_key="parameters"
    ),
    "mistral": ToolCallFormat("mistral", "[TOOL_CALLS]", ""),
    "generic": ToolCallFormat("generic", "<tool_call>", "</tool_call>"),
}


def detect_format(template: str) -> str:
    """The tool-call format a chat template teaches: ``mistral`` when it holds
    ``[TOOL_CALLS]``, ``hermes`` when it holds ``<tool_call>``, ``llama3`` when it holds
    ``<|python_tag|>`` (or ``"parameters"`` with ``<|start_header_id|>``), else ``generic``
    (templates without tools, rendered by the fallback)."""
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or (
        '"parameters"' in template and "<|start_header_id|>" in template
    ):
        return "llama3"
    return "generic"


def new_call_id() -> str:
    """``call_`` and 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


@dataclass
class ParsedDelta:
    text: str = ""  #: plain text, safe to stream now
    calls: list[ToolCall] = field(default_factory=list)  #: calls completed by this feed


def _held(buffer: str, marker: str) -> int:
    """The length of the longest end of ``buffer`` that begins ``marker`` (still undecided)."""
    for n in range(min(len(buffer), len(marker) - 1), 0, -1):
        if marker.startswith(buffer[-n:]):
            return n
    return 0


class _JsonEnd:
    """Finds where one JSON object or array ends, a character at a time (strings and escapes
    aware), so a streamed call is parsed once, when complete."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.seen = 0  # characters scanned

    def scan(self, text: str) -> int:
        """Scan on from where the last call stopped; the end index (exclusive) or -1."""
        for i in range(self.seen, len(text)):
            ch = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.seen = i + 1
                    return i + 1
        self.seen = len(text)
        return -1


class ToolCallParser:
    """Splits streamed model output into plain text and tool calls of one ``format``.

    ``feed(text)`` returns the text that can no longer be part of a call (text that could
    still begin a marker is held back until it cannot) and the calls completed by it; call
    text itself never appears as text. ``finish()`` ends the stream: an unfinished call comes
    back as plain text, marker included, as does a complete one that is not
    ``{"name": str, "arguments": object}``. Whitespace between calls and after the last one
    is dropped. Names outside ``tools`` are still reported (the grammar keeps them out when it
    is enforced). Feeding a text whole or a character at a time gives the same text and calls.
    """

    def __init__(self, format: str, tools: Sequence[ToolDefinition] = ()) -> None:
        """:raises KeyError: an unknown format name."""
        self.format = FORMATS[format]
        self.tool_names = frozenset(t.name for t in tools)
        self._buf = ""  # text not decided yet (a call's text without its start marker)
        self._in_call = False
        self._marker_seen = False
        self._scanner = _JsonEnd()
        self._count = 0  # calls emitted
        self._after_call = False  # whitespace after a call is held, dropped before the next
        self._gap = ""  # that whitespace
        self._started = False  # llama3: the output's first non-space character was seen
        self._tagged = False  # llama3: it was <|python_tag|>
        self._plain = False  # llama3: the output is text, no call can follow

    @property
    def in_call(self) -> bool:
        """A call has started and is not complete yet."""
        return self._in_call

    @property
    def marker_seen(self) -> bool:
        """A call has started at some point of this stream."""
        return self._marker_seen

    @property
    def calls_emitted(self) -> int:
        return self._count

    def feed(self, text: str) -> ParsedDelta:
        """More generated text; see the class."""
        self._buf += text
        out = ParsedDelta()
        if self.format.bare_json_start:
            self._feed_llama3(out)
        else:
            self._feed_marked(out)
        return out

    def finish(self) -> ParsedDelta:
        """The end of the stream: whatever was held back, as text (see the class)."""
        out = ParsedDelta()
        rest, self._buf = self._buf, ""
        if self.format.bare_json_start:
            if self._in_call:
                out.text = (self.format.start if self._tagged and not self._count else "") + rest
            elif not self._count or self._plain:
                out.text = rest
        elif self._in_call:
            out.text = self.format.start + rest
        elif rest:
            out.text = self._gap + rest
        self._in_call = False
        self._gap = ""
        return out

    # -- marked formats: hermes, generic, mistral ----------------------------------------

    def _feed_marked(self, out: ParsedDelta) -> None:
        start = self.format.start
        while True:
            if not self._in_call:
                at = self._buf.find(start)
                if at < 0:
                    cut = len(self._buf) - _held(self._buf, start)
                    text, self._buf = self._buf[:cut], self._buf[cut:]
                    self._text(out, text, before_call=False)
                    return
                text, self._buf = self._buf[:at], self._buf[at + len(start) :]
                self._text(out, text, before_call=True)
                self._in_call = self._marker_seen = True
                self._scanner = _JsonEnd()
            if self.format.end:
                at = self._buf.find(self.format.end)
                if at < 0:
                    return
                body, self._buf = self._buf[:at], self._buf[at + len(self.format.end) :]
                raw = start + body + self.format.end
                self._close(out, self._calls_of(body.strip(), array=False), raw)
                continue
            # mistral: the JSON array's end ends the call
            head = self._buf.lstrip()
            if not head:
                return
            if head[0] != "[":  # not a call after all: the marker was text
                self._in_call = False
                out.text += start
                self._after_call = False
                continue
            end = self._scanner.scan(self._buf)
            if end < 0:
                return
            body, self._buf = self._buf[:end], self._buf[end:]
            self._close(out, self._calls_of(body.strip(), array=True), start + body)

    def _text(self, out: ParsedDelta, text: str, *, before_call: bool) -> None:
        """Plain text out, except whitespace right after a call: held, and dropped when a call
        or the end follows."""
        if self._after_call:
            text, self._gap = self._gap + text, ""
            if not text.strip():
                if not before_call:
                    self._gap = text
                return
            self._after_call = False
        out.text += text

    def _close(self, out: ParsedDelta, calls: list[ToolCall] | None, raw: str) -> None:
        self._in_call = False
        if calls is None:
            out.text += raw
            self._after_call = False
            return
        out.calls += calls
        self._after_call = True

    def _calls_of(self, body: str, *, array: bool) -> list[ToolCall] | None:
        """The calls a complete call body holds, or None when it is not one."""
        try:
            value = json.loads(body)
        except ValueError:
            return None
        items = value if array else [value]
        if not isinstance(items, list) or not items:
            return None
        parsed = [self._name_arguments(item) for item in items]
        calls: list[ToolCall] = []
        for one in parsed:
            if one is None:
                return None
            calls.append(ToolCall(new_call_id(), one[0], one[1], self._count + len(calls)))
        self._count += len(calls)
        return calls

    def _name_arguments(self, item: object) -> tuple[str, str] | None:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get(self.format.arguments_key, item.get("arguments", {}))
        if not isinstance(arguments, dict):
            return None
        return item["name"], json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))

    # -- llama3: the whole output is the calls -------------------------------------------

    def _feed_llama3(self, out: ParsedDelta) -> None:
        tag = self.format.start
        if self._plain:
            out.text, self._buf = self._buf, ""
            return
        if not self._started:
            head = self._buf.lstrip()
            if not head or (tag.startswith(head) and head != tag):
                return  # undecided: leading space, or a partial tag
            self._started = True
            if head.startswith(tag):
                self._buf = head[len(tag) :]
                self._in_call = self._marker_seen = self._tagged = True
            elif head.startswith("{"):
                self._buf = head
            else:
                self._plain = True
                out.text, self._buf = self._buf, ""
                return
        while True:
            if self._scanner.seen == 0:  # between calls: separators, then "{"
                head = self._buf.lstrip(" \t\r\n;")
                if not head:
                    return
                if head[0] != "{":  # the rest is text
                    out.text += (
                        (tag if self._tagged else "") + self._buf if not self._count else head
                    )
                    self._buf = ""
                    self._in_call = False
                    self._plain = True
                    return
                self._buf = head
                self._in_call = self._marker_seen = True
            end = self._scanner.scan(self._buf)
            if end < 0:
                return
            body, rest = self._buf[:end], self._buf[end:]
            self._scanner = _JsonEnd()
            self._in_call = False
            calls = self._calls_of(body, array=False)
            if calls is None:  # a JSON answer, not a call: all of it is text
                lead = tag if self._tagged and not self._count else ""
                out.text += lead + body + rest
                self._buf = ""
                self._plain = True
                return
            out.calls += calls
            self._buf = rest
