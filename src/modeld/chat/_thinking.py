"""Thinking sections (``<think>…</think>``) split off streamed model output.

A section counts only when it is the first non-whitespace thing the model writes, or when the
prompt itself left one open (a template that ends its generation prompt inside ``<think>``:
:func:`prompt_opens_thinking`); a ``<think>`` later in an answer is answer text. The
whitespace between ``</think>`` and the answer is dropped, as is whitespace before ``<think>``.
"""

from __future__ import annotations

__all__ = ["THINK_END", "THINK_START", "ThinkingSplitter", "prompt_opens_thinking"]

THINK_START = "<think>"
THINK_END = "</think>"


def _held(buffer: str, marker: str) -> int:
    """The length of the longest end of ``buffer`` that begins ``marker``."""
    for n in range(min(len(buffer), len(marker) - 1), 0, -1):
        if marker.startswith(buffer[-n:]):
            return n
    return 0


def prompt_opens_thinking(
    rendered_prompt: str, start: str = THINK_START, end: str = THINK_END
) -> bool:
    """The rendered prompt ends inside an unclosed ``start`` (the model's first tokens are
    thinking)."""
    opened = rendered_prompt.rfind(start)
    return opened >= 0 and rendered_prompt.rfind(end) < opened


class ThinkingSplitter:
    """Streams model output into ``(thinking, text)`` pieces.

    ``feed(text)`` returns what can be told apart now; text that could still be the start of
    a marker (``<thi``) is held back until it cannot. ``flush()`` returns what is held at the
    end of the stream (a partial marker goes to the side it was on). Feeding a text whole or a
    character at a time gives the same joined thinking and text.
    """

    _BEFORE, _THINKING, _AFTER_END, _TEXT = range(4)

    def __init__(
        self, start: str = THINK_START, end: str = THINK_END, *, open_at_start: bool = False
    ) -> None:
        self.start = start
        self.end = end
        self._state = self._THINKING if open_at_start else self._BEFORE
        self._buf = ""
        self._seen = open_at_start

    @property
    def in_thinking(self) -> bool:
        """Inside a thinking section now (text fed goes to thinking)."""
        return self._state == self._THINKING

    @property
    def thinking_seen(self) -> bool:
        """A thinking section was opened in this stream (or by the prompt)."""
        return self._seen

    def feed(self, text: str) -> tuple[str, str]:
        """More output: ``(thinking, text)`` that can be emitted now."""
        self._buf += text
        thinking, answer = "", ""
        while True:
            if self._state == self._BEFORE:
                head = self._buf.lstrip()
                if not head or (self.start.startswith(head) and head != self.start):
                    return thinking, answer  # undecided
                if head.startswith(self.start):
                    self._buf = head[len(self.start) :]
                    self._state = self._THINKING
                    self._seen = True
                    continue
                self._state = self._TEXT
            if self._state == self._THINKING:
                at = self._buf.find(self.end)
                if at < 0:
                    cut = len(self._buf) - _held(self._buf, self.end)
                    thinking += self._buf[:cut]
                    self._buf = self._buf[cut:]
                    return thinking, answer
                thinking += self._buf[:at]
                self._buf = self._buf[at + len(self.end) :]
                self._state = self._AFTER_END
            if self._state == self._AFTER_END:
                head = self._buf.lstrip()
                if not head:
                    self._buf = ""
                    return thinking, answer
                self._buf = head
                self._state = self._TEXT
            answer += self._buf
            self._buf = ""
            return thinking, answer

    def flush(self) -> tuple[str, str]:
        """The end of the stream: whatever was held back."""
        rest, self._buf = self._buf, ""
        if self._state == self._THINKING:
            return rest, ""
        if self._state == self._AFTER_END:
            return "", ""
        return "", rest
