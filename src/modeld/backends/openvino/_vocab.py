"""Each token's exact bytes, for streaming: from the detokenizer IR's own vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

__all__ = ["DetokenizerVocab", "detokenizer_vocab", "raw_piece", "read_detokenizer_vocab"]


@dataclass(frozen=True)
class DetokenizerVocab:
    """What the detokenizer IR's VocabDecoder stores."""

    #: each token's bytes as stored (``Tokenizer.get_vocab_vector`` cannot return entries that
    #: are not valid UTF-8 on their own, and those are exactly the ones a streaming client
    #: needs byte-exact)
    entries: list[bytes]
    #: the ids it skips as special: control tokens, which no plain text produces; None when
    #: the IR computes that list rather than storing it (a Slice of a constant, in some
    #: converters' output)
    special_ids: list[int] | None


def read_detokenizer_vocab(ir_dir: Path) -> DetokenizerVocab:
    """One read of ``ir_dir``'s detokenizer IR: its entries and special ids."""
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)

    # A Core made before that import (the backend's own) cannot read the tokenizer operations:
    # openvino_tokenizers adds its extension to each Core as it is created. Everything is read
    # out of the model while this Core, whose extension holds its operations, is alive.
    core = ov.Core()
    model = core.read_model(str(ir_dir / "openvino_detokenizer.xml"))
    node = next((n for n in model.get_ordered_ops() if n.get_type_name() == "VocabDecoder"), None)
    if node is None:
        return DetokenizerVocab([], [])
    begins, ends, chars = (np.array(node.input_value(i).get_node().get_data()) for i in (1, 2, 3))
    raw = chars.tobytes()
    entries = [raw[b:e] for b, e in zip(begins.tolist(), ends.tolist(), strict=True)]
    special: list[int] | None = []
    if node.get_input_size() >= 5:
        source = node.input_value(4).get_node()
        special = (
            [int(t) for t in np.array(source.get_data()).tolist()]
            if source.get_type_name() == "Constant"
            else None
        )
    return DetokenizerVocab(entries, special)


def detokenizer_vocab(ir_dir: Path) -> list[bytes]:
    """Each token's bytes as the detokenizer IR stores them (see ``DetokenizerVocab``)."""
    return read_detokenizer_vocab(ir_dir).entries


def raw_piece(entry: bytes) -> bytes:
    """A vocabulary entry as text bytes: SentencePiece byte tokens and word-start marks resolved."""
    if len(entry) == 6 and entry.startswith(b"<0x") and entry.endswith(b">"):
        return bytes([int(entry[3:5], 16)])
    return entry.replace("\u2581".encode(), b" ")
