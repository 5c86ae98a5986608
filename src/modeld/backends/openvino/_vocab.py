"""Each token's exact bytes, for streaming: from the detokenizer IR's own vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

__all__ = ["detokenizer_special_ids", "detokenizer_vocab", "raw_piece"]


def detokenizer_vocab(ir_dir: Path) -> list[bytes]:
    """Each token's bytes as the detokenizer IR stores them (its VocabDecoder's constants).

    ``Tokenizer.get_vocab_vector`` cannot return entries that are not valid UTF-8 on their own,
    and those are exactly the ones a streaming client needs byte-exact.
    """
    node = _vocab_decoder(ir_dir)
    if node is None:
        return []
    begins, ends, chars = (np.array(node.input_value(i).get_node().get_data()) for i in (1, 2, 3))
    raw = chars.tobytes()
    return [raw[b:e] for b, e in zip(begins.tolist(), ends.tolist(), strict=True)]


def detokenizer_special_ids(ir_dir: Path) -> list[int] | None:
    """The ids the detokenizer skips as special (its VocabDecoder's skip list): control tokens,
    which no plain text produces. None when the IR computes that list rather than storing it
    (a Slice of a constant, in some converters' output)."""
    node = _vocab_decoder(ir_dir)
    if node is None or node.get_input_size() < 5:
        return []
    source = node.input_value(4).get_node()
    if source.get_type_name() != "Constant":
        return None
    return [int(t) for t in np.array(source.get_data()).tolist()]


_CORES: list[ov.Core] = []


def _vocab_decoder(ir_dir: Path) -> ov.Node | None:
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)

    # A Core made before that import (the backend's own) cannot read the tokenizer operations:
    # openvino_tokenizers adds its extension to each Core as it is created. This one must
    # outlive the model, whose operations live in that extension.
    core = ov.Core()
    _CORES.append(core)
    model = core.read_model(str(ir_dir / "openvino_detokenizer.xml"))
    for node in model.get_ordered_ops():
        if node.get_type_name() == "VocabDecoder":
            return node
    return None


def raw_piece(entry: bytes) -> bytes:
    """A vocabulary entry as text bytes: SentencePiece byte tokens and word-start marks resolved."""
    if len(entry) == 6 and entry.startswith(b"<0x") and entry.endswith(b">"):
        return bytes([int(entry[3:5], 16)])
    return entry.replace("\u2581".encode(), b" ")
