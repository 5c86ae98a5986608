"""An OpenVINO model's vocabulary as llguidance's tokenizer: each token's exact bytes from the
detokenizer IR (control tokens marked with llguidance's 0xFF prefix, so grammars never match
them as text), the model's tokenizer for a grammar's literal strings, and the
end-of-generation ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

import llguidance

from modeld.backends.openvino._vocab import raw_piece, read_detokenizer_vocab

if TYPE_CHECKING:
    from modeld.backends.openvino._backend import OpenVinoModel

__all__ = ["grammar_tokenizer"]

#: llguidance's mark for a special token's bytes
_SPECIAL = b"\xff"


class _Vocabulary:
    """What ``llguidance.TokenizerWrapper`` reads from a tokenizer."""

    def __init__(self, model: OpenVinoModel) -> None:
        self._model = model
        vocab = model.facts.vocab_size
        stored = read_detokenizer_vocab(model.ir_dir)
        entries = stored.entries + [b""] * (vocab - len(stored.entries))
        special = stored.special_ids
        if special is None:  # not stored: ask the tokenizer, token by token (once per model)
            special = [t for t in range(vocab) if model.is_control(t)]
        self.special_token_ids = special
        self.tokens = [raw_piece(entry) for entry in entries[:vocab]]
        for t in self.special_token_ids:
            if t < vocab:
                self.tokens[t] = _SPECIAL + entries[t]
        eog = model.end_of_generation_ids()
        self.eos_token_id = eog[0] if eog else 0
        bos = model.facts.bos_token_id
        self.bos_token_id = bos if bos >= 0 else None

    def __call__(self, text: str) -> list[int]:
        return self._model.tokenize(text, add_special=False, parse_special=False)


def grammar_tokenizer(model: OpenVinoModel) -> llguidance.LLTokenizer:
    """Built once per loaded model (``Once``), off the engine thread."""
    wrapper = llguidance.TokenizerWrapper(_Vocabulary(model))
    return llguidance.LLTokenizer(
        wrapper, n_vocab=model.facts.vocab_size, eos_token=model.end_of_generation_ids()
    )
