"""Turning generated token bytes into streamed text, holding back what may become a stop string."""

from __future__ import annotations

import codecs
from collections.abc import Sequence

__all__ = ["StopScanner"]


class StopScanner:
    """Feed each token's bytes; get the text that is safe to send, and the stop string if one
    completed. Text that could still be the start of a stop string (or half a UTF-8 character)
    is held back until it cannot.

    ``carry``: bytes a previous Decode of the same tape generated but did not send (the first
    bytes of a character split over tokens, see :meth:`remainder`); they come out before (and
    joined with) the bytes fed here.
    """

    def __init__(self, stops: Sequence[str], carry: bytes = b"") -> None:
        self._stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = self._decoder.decode(carry)

    def feed(self, data: bytes) -> tuple[str, str | None]:
        self._pending += self._decoder.decode(data)
        found = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if found:
            index, stop = min(found)
            out, self._pending = self._pending[:index], ""
            self._decoder.reset()  # what follows a stop string is never sent
            return out, stop
        hold = self._longest_stop_prefix_suffix()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, None

    def flush(self) -> str:
        """The text held back for a stop string, now that no more tokens come in this Decode.
        The bytes of a character that is not complete yet stay (see :meth:`remainder`)."""
        rest, self._pending = self._pending, ""
        return rest

    def remainder(self) -> bytes:
        """What was fed and not sent: held-back text and the bytes of an incomplete character,
        as UTF-8 bytes, for the next Decode of the same tape to start from."""
        undecoded: bytes = self._decoder.getstate()[0]
        return self._pending.encode("utf-8", errors="surrogatepass") + undecoded

    def _longest_stop_prefix_suffix(self) -> int:
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:k]):
                    best = k
                    break
        return best
