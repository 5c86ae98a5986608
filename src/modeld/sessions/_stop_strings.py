"""Turning generated token bytes into streamed text, holding back what may become a stop string."""

from __future__ import annotations

import codecs
from collections.abc import Sequence

__all__ = ["StopScanner"]


class StopScanner:
    """Feed each token's bytes; get the text that is safe to send, and the stop string if one
    completed. Text that could still be the start of a stop string (or half a UTF-8 character)
    is held back until it cannot."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> tuple[str, str | None]:
        self._pending += self._decoder.decode(data)
        found = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if found:
            index, stop = min(found)
            out, self._pending = self._pending[:index], ""
            return out, stop
        hold = self._longest_stop_prefix_suffix()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, None

    def flush(self) -> str:
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return rest

    def _longest_stop_prefix_suffix(self) -> int:
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:k]):
                    best = k
                    break
        return best
