"""The prefix index: which session holds the longest prefix of a prompt, in O(prompt).

A tape is cut into blocks of ``BLOCK`` tokens; block k's key is a hash chained over blocks
0..k (vLLM's prefix-caching block hash), so two tapes share block k's key only if they agree on
every token up to the end of block k (up to hash collisions, which the caller's exact check
catches). The index maps each key to the sessions whose tape has that block. Finding the longest
indexed prefix of a prompt hashes its blocks once and binary-searches the chain: if any session
holds block k, one holds every block before it. The cost is independent of how many sessions
exist; before it, the donor search compared the prompt with every session's tape.

Entries may lag behind a tape that changed since its last :meth:`update` (a Decode appends
tokens; an EnsurePrefix truncates), so a hit is a *candidate*: the caller measures the real
common prefix against the candidate's tape, which is always exact.

Engine thread only, like the tapes it indexes.
"""

from __future__ import annotations

import hashlib
import itertools
from array import array
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BLOCK", "PrefixIndex", "common_prefix"]

#: tokens per indexed block; a share shorter than this is never worth its copy anyway
BLOCK = 16
_ROOT = b"modeld-prefix-index-v1"

K = TypeVar("K", bound=Hashable)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):  # the usual warm turn, compared in C
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect on slices, also in C
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if list(a[lo:mid]) == list(b[lo:mid]):
            lo = mid
        else:
            hi = mid
    return lo


def block_keys(tokens: Sequence[int], start: int = 0, prev: bytes = _ROOT) -> Iterator[bytes]:
    """Chained keys of the whole blocks of ``tokens`` from block ``start`` (``prev``: the key of
    block ``start - 1``)."""
    for offset in range(start * BLOCK, len(tokens) - BLOCK + 1, BLOCK):
        block = array("i", tokens[offset : offset + BLOCK]).tobytes()
        prev = hashlib.blake2b(prev + block, digest_size=16).digest()
        yield prev


@dataclass
class _Entry:
    tokens: list[int] = field(default_factory=list)  #: whole blocks indexed, as a copy
    keys: list[bytes] = field(default_factory=list)  #: keys[k] chains blocks 0..k


class PrefixIndex(Generic[K]):
    """Longest indexed prefix lookups over the tapes of many holders (sessions)."""

    def __init__(self) -> None:
        self._holders: dict[bytes, set[K]] = {}
        self._entries: dict[K, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, holder: K, tape: Sequence[int]) -> None:
        """Index ``holder``'s current ``tape`` (O(new blocks), plus a C-speed compare)."""
        entry = self._entries.setdefault(holder, _Entry())
        whole = len(tape) // BLOCK * BLOCK
        keep = common_prefix(entry.tokens, tape[:whole]) // BLOCK
        for key in entry.keys[keep:]:
            self._unlink(key, holder)
        del entry.keys[keep:]
        prev = entry.keys[-1] if entry.keys else _ROOT
        for key in block_keys(tape[:whole], keep, prev):
            entry.keys.append(key)
            self._holders.setdefault(key, set()).add(holder)
        entry.tokens = list(tape[:whole])

    def remove(self, holder: K) -> None:
        entry = self._entries.pop(holder, None)
        if entry is not None:
            for key in entry.keys:
                self._unlink(key, holder)

    def _unlink(self, key: bytes, holder: K) -> None:
        holders = self._holders.get(key)
        if holders is not None:
            holders.discard(holder)
            if not holders:
                del self._holders[key]

    def longest(
        self,
        tokens: Sequence[int],
        exclude: K | None = None,
        limit: int = 4,
        accept: Callable[[K], bool] | None = None,
    ) -> tuple[int, list[K]]:
        """(tokens covered, up to ``limit`` holders) for the longest run of whole blocks of
        ``tokens`` that a holder other than ``exclude`` has indexed; (0, []) when none has even
        one block. ``accept``: only holders it accepts count (a session of another KV cache
        type cannot donate); the first accepted holder of a block ends its scan, so a mix costs
        little. O(len(tokens)) hashing plus O(log blocks) lookups."""
        keys = list(block_keys(tokens))

        def wanted(holder: K) -> bool:
            return holder != exclude and (accept is None or accept(holder))

        def held(k: int) -> bool:
            holders = self._holders.get(keys[k], ())
            if accept is not None:
                return any(wanted(h) for h in holders)
            return len(holders) > 1 or (len(holders) == 1 and exclude not in holders)

        lo, hi = -1, len(keys)  # held at lo (or lo = -1), not held at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if held(mid):
                lo = mid
            else:
                hi = mid
        if lo < 0:
            return 0, []
        others = (h for h in self._holders[keys[lo]] if wanted(h))
        return (lo + 1) * BLOCK, list(itertools.islice(others, limit))
