"""Grammars compiled against a model's vocabulary, once: a Decode gets a copy of the compiled
matcher in its start state.

Compiling (llguidance builds the lexer and parser tables) costs milliseconds for a schema and
more for a large grammar; copying a compiled matcher costs microseconds. Compiles run on a
worker thread (llguidance drops the GIL), never on the engine thread, and before the session's
KV is touched, so a grammar that does not compile is refused with nothing changed.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import llguidance

from modeldconn._errors import InvalidArgument

__all__ = ["CompiledGrammar", "GrammarCompiler"]

#: compiled grammars kept per compiler (a daemon has one): agents reuse a handful of schemas
CACHE_SIZE = 128


@dataclass(frozen=True)
class CompiledGrammar:
    """A compiled grammar in its start state; :meth:`start` hands out a copy to consume."""

    prototype: llguidance.LLMatcher
    #: the tokenizer's vocabulary size: the width of the matcher's token masks
    vocab_size: int
    compile_ms: float  #: what compiling it took, when it was first compiled
    cached: bool  #: this lookup found it compiled already

    def start(self) -> llguidance.LLMatcher:
        return self.prototype.deep_copy()


class GrammarCompiler:
    """Compiles llguidance grammar text against a tokenizer, caching the result (LRU,
    :data:`CACHE_SIZE` entries) by tokenizer and text. Thread-safe."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, str], tuple[llguidance.LLMatcher, float]] = (
            OrderedDict()
        )
        self.compiles = 0
        self.hits = 0

    def compile(
        self, tokenizer: llguidance.LLTokenizer, grammar: str, field: str
    ) -> CompiledGrammar:
        """Any thread but the engine's.

        :raises InvalidArgument: the grammar does not compile; the message is llguidance's,
            which names the line and column (or the schema keyword) at fault; ``field`` is
            the wire field that carried it.
        """
        key = (id(tokenizer), grammar)
        vocab = tokenizer.vocab_size
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return CompiledGrammar(found[0], vocab, found[1], cached=True)
        started = time.perf_counter()
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidArgument(_first_lines(matcher.get_error()), field=field)
        elapsed = (time.perf_counter() - started) * 1000
        with self._lock:
            self.compiles += 1
            self._cache[key] = (matcher, elapsed)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return CompiledGrammar(matcher, vocab, elapsed, cached=False)


def _first_lines(message: str, limit: int = 12) -> str:
    """llguidance's message with its source excerpt, kept short enough for one error."""
    lines = message.strip().splitlines()
    return "\n".join(lines[:limit])
