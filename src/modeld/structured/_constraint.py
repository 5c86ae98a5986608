"""One Decode's grammar state: the tokens allowed next, and the tokens consumed so far.

It lives exactly as long as its Decode: a cancelled stream leaves it behind with the Decode,
and the next turn starts a new one from the compiled grammar's start state, so no state is
carried between turns.
"""

from __future__ import annotations

import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from modeld.structured._compiler import CompiledGrammar
from modeldconn._errors import SessionFatal

__all__ = ["TokenConstraint"]


class TokenConstraint:
    """A Decode's own copy of ``grammar`` in its start state; ``vocab_size``: the length of the
    logits rows it masks (tokens past the grammar tokenizer's vocabulary are never allowed)."""

    def __init__(self, grammar: CompiledGrammar, vocab_size: int) -> None:
        self._matcher = grammar.start()
        self._vocab_size = vocab_size
        self._bits = allocate_token_bitmask(1, grammar.vocab_size)
        self._allowed = np.zeros(vocab_size, dtype=bool)
        self.consumed = 0

    @property
    def done(self) -> bool:
        """The language is complete: nothing but end-of-generation may follow."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """What was generated so far is a complete sentence (more may still follow)."""
        return bool(self._matcher.is_accepting())

    def allowed(self) -> np.ndarray:
        """The tokens that may come next: bool, shape (vocab_size,); a view reused by the next
        call."""
        fill_next_token_bitmask(self._matcher, self._bits)
        self._check()
        bits = np.unpackbits(self._bits[0].view(np.uint8), bitorder="little")
        # the tokenizer's vocabulary may be shorter than the logits (padded output layers)
        self._allowed[:] = False
        span = min(bits.size, self._vocab_size)
        self._allowed[:span] = bits[:span].view(bool)
        return self._allowed

    def accept(self, token: int) -> None:
        """Advance past ``token`` (sampled under :meth:`allowed`, or forced).

        :raises SessionFatal: the grammar refused it, which a masked sample never does.
        """
        if not self._matcher.consume_token(token):
            self._check()
            raise SessionFatal(f"the grammar refused token {token}")
        self.consumed += 1

    def accepts(self, tokens: list[int]) -> bool:
        """Whether ``tokens`` could come next (nothing is consumed)."""
        return bool(self._matcher.validate_tokens(tokens) == len(tokens))

    def _check(self) -> None:
        if self._matcher.is_error():
            raise SessionFatal(f"grammar state: {self._matcher.get_error()}")
