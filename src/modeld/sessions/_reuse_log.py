"""A session's reuse history for ExplainSession, and its tape's hash for ListSessions.

Each turn (EnsurePrefix, PrefillSuffix, Decode) and each way a session is born from another's
KV (ForkSession, Restore) leaves one :class:`TurnRecord` in a ring of the last ``KEEP_TURNS``:
how many tokens of KV it kept, computed, dropped, generated and copied from another session,
and whether it first restored parked KV (``restored_from``). The records are written where the
numbers are known (the session layer's results) and read by the loop; a record is an immutable
value appended to a bounded deque, so a reader never sees half of one.

The tape hash is what EnsurePrefix reports as ``prefix_hash`` (sha256 of the token ids as
little-endian int32s), kept per tape version so that listing 1,000 sessions does not hash
1,000 tapes: the tape list is replaced on every change except a Decode's appends, so a cached
hash is reused while the session holds the very same list object at the same length, and is
extended incrementally (``hashlib``'s ``copy``) when that list only grew.
"""

from __future__ import annotations

import collections
import hashlib
import struct
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KEEP_TURNS", "ReuseLog", "TurnRecord"]

#: turns kept per session (ExplainSession's ``last_turns`` 0 returns them all)
KEEP_TURNS = 32

OPERATIONS = frozenset({"ensure_prefix", "prefill_suffix", "decode", "fork", "restore"})


@dataclass(frozen=True)
class TurnRecord:
    """One turn's reuse, in tokens. ``restored_from``: "ram" | "disk" when the turn first
    restored the session's parked KV, else ""."""

    operation: str
    at_unix_s: float
    reused: int = 0  #: tokens of KV kept
    prefilled: int = 0  #: tokens computed into the KV
    dropped: int = 0  #: tokens of KV (or tape) truncated
    generated: int = 0  #: tokens decoded
    shared: int = 0  #: tokens copied from another session's KV
    restored_from: str = ""


@dataclass
class _TapeHash:
    tape: list[int]  #: the list object hashed (held, so its id cannot be reused meanwhile)
    length: int
    hasher: Any  #: hashlib sha256 state after ``length`` tokens
    hexdigest: str


@dataclass
class ReuseLog:
    """Per session. ``note_restore`` is called on the engine thread when the session's parked
    KV is brought back; the next :meth:`record` carries it and clears it."""

    turns: collections.deque[TurnRecord] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP_TURNS)
    )
    pending_restore: str = ""
    _hash: _TapeHash | None = None

    def note_restore(self, tier: str) -> None:
        self.pending_restore = tier

    def record(self, operation: str, **counts: int) -> TurnRecord:
        """Append one turn (``counts``: reused, prefilled, dropped, generated, shared; negative
        figures are clamped to 0) and return it."""
        assert operation in OPERATIONS, operation
        turn = TurnRecord(
            operation,
            time.time(),
            restored_from=self.pending_restore,
            **{key: max(0, int(value)) for key, value in counts.items()},
        )
        self.pending_restore = ""
        self.turns.append(turn)
        return turn

    def last(self, n: int = 0) -> list[TurnRecord]:
        """The last ``n`` turns (0: all kept), oldest first."""
        turns = list(self.turns)
        return turns[-n:] if n else turns

    def tape_hash(self, tape: list[int]) -> str:
        """sha256 hex of ``tape`` (equal to EnsurePrefix's ``prefix_hash`` of the same tokens),
        from the cache when ``tape`` is the list last hashed, at the same length or longer."""
        length = len(tape)
        cached = self._hash
        if cached is not None and cached.tape is tape and cached.length <= length:
            if cached.length == length:
                return cached.hexdigest
            hasher = cached.hasher.copy()
            start = cached.length
        else:
            hasher, start = hashlib.sha256(), 0
        added = tape[start:length]
        hasher.update(struct.pack(f"<{len(added)}i", *added))
        digest = str(hasher.hexdigest())
        self._hash = _TapeHash(tape, length, hasher, digest)
        return digest
