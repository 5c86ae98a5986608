"""A llama.cpp vocabulary as llguidance's tokenizer (each token's bytes, control tokens marked,
the end-of-generation ids), through llguidance's own llama.cpp reader: it also hands llguidance
llama.cpp's tokenizer, which it calls for the literal strings of a grammar."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import llguidance
from llguidance.llamacpp import lltokenizer_from_vocab

if TYPE_CHECKING:
    from modeld.backends.llama._backend import LlamaModel

__all__ = ["grammar_tokenizer"]


def grammar_tokenizer(model: LlamaModel) -> llguidance.LLTokenizer:
    """Seconds for a 262k vocabulary (one llama_token_to_piece call per token): built once per
    loaded model (``Once``), off the engine thread."""
    with warnings.catch_warnings():
        # llguidance 1.9 reads token attributes through llama-cpp-python's deprecated alias
        # (llama_token_get_attr); the call is the same as the new name's
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(
            model.vocab, n_vocab=model.facts.vocab_size, eos_token=model.end_of_generation_ids()
        )
