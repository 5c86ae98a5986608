#!/usr/bin/env python3
"""Build the tiny random BERT cross-encoder (reranker) GGUF that the Rerank tests run on llama.

A BERT encoder as llama.cpp loads one (``bert`` architecture, WordPiece vocabulary, learned
positions, post-layer-norm blocks) that declares pooling type *rank* and carries the
classification head llama.cpp's rank pooling applies to the ``[CLS]`` row: ``cls`` (dense +
tanh) and ``cls.output`` (one logit), the tensors ``convert_hf_to_gguf.py`` writes for a
``BertForSequenceClassification``. Weights are random (F32), so scores mean nothing; the
tests compare modeld's scores with llama.cpp's own rank output for the same pairs. The output is
committed (`tests/fixtures/tiny-bert-reranker.gguf`, ~150 KB); run this only to change it:

    .venv/bin/pip install gguf numpy
    .venv/bin/python scripts/make_tiny_bert_reranker.py tests/fixtures/tiny-bert-reranker.gguf

Everything is seeded, so the same library versions write the same bytes.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import gguf
import numpy as np

HIDDEN = 32
LAYERS = 2
HEADS = 2
FFN = 64
CONTEXT = 512
TOKEN_TYPES = 2
SEED = 20261217
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: whole words (each also a word start "▁word"); the tests' sentences are made of these
WORDS = """
the a an of to in on is are was it and or for with by at as from this that which what where
how why who river rivers water flows flow sea ocean bank banks long longest world valley
mountain rain fish boat bridge city tax taxes form forms income return file filing deadline
year pay money bank account recipe recipes cook cooking bake oven flour sugar egg eggs
butter salt cake bread minutes stir mix bowl heat about tell me question answer document
query
""".split()  # noqa: SIM905


def vocabulary() -> tuple[list[str], list[int]]:
    """Tokens in llama.cpp's phantom-space form (``convert_hf_to_gguf``'s ``BertModel``: a
    word start is ``"\u2581" + word``, a ``##`` continuation is bare, specials as they are)
    and their types."""
    tokens = list(SPECIALS)
    types = [gguf.TokenType.CONTROL] * len(SPECIALS)
    pieces = list(string.ascii_lowercase) + list(string.digits) + list(".,;:!?'\"-()")
    for piece in pieces:
        tokens += ["\u2581" + piece, piece]  # a one-character word, and a continuation
        types += [gguf.TokenType.NORMAL] * 2
    for word in dict.fromkeys(WORDS):
        if "\u2581" + word not in tokens:  # one-letter words are in already
            tokens.append("\u2581" + word)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out: Path = parser.parse_args(argv).out

    tokens, types = vocabulary()
    vocab = len(tokens)
    rng = np.random.default_rng(SEED)

    def weight(rows: int, cols: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def bias(n: int) -> np.ndarray:
        return (rng.standard_normal(n) * 0.02).astype(np.float32)

    def norm(prefix: str) -> None:
        scale = 1 + rng.standard_normal(HIDDEN) * 0.05
        writer.add_tensor(f"{prefix}.weight", scale.astype(np.float32))
        writer.add_tensor(f"{prefix}.bias", bias(HIDDEN))

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), "bert")
    writer.add_name("tiny-bert-reranker-random")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_token_type_count(TOKEN_TYPES)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bos_token_id(SPECIALS.index("[CLS]"))
    writer.add_eos_token_id(SPECIALS.index("[SEP]"))
    writer.add_sep_token_id(SPECIALS.index("[SEP]"))
    writer.add_unk_token_id(SPECIALS.index("[UNK]"))
    writer.add_pad_token_id(SPECIALS.index("[PAD]"))
    writer.add_mask_token_id(SPECIALS.index("[MASK]"))
    # a BERT cross-encoder's pair: [CLS] query [SEP] document [SEP] (llama-server's
    # [BOS] query [EOS] document [EOS]; no extra [SEP] between them)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(False)
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", True)

    writer.add_tensor("token_embd.weight", weight(vocab, HIDDEN, 0.5))
    writer.add_tensor("token_types.weight", weight(TOKEN_TYPES, HIDDEN, 0.1))
    writer.add_tensor("position_embd.weight", weight(CONTEXT, HIDDEN, 0.1))
    norm("token_embd_norm")
    for n in range(LAYERS):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{n}.{part}.weight", weight(HIDDEN, HIDDEN))
            writer.add_tensor(f"blk.{n}.{part}.bias", bias(HIDDEN))
        norm(f"blk.{n}.attn_output_norm")
        writer.add_tensor(f"blk.{n}.ffn_up.weight", weight(FFN, HIDDEN))
        writer.add_tensor(f"blk.{n}.ffn_up.bias", bias(FFN))
        writer.add_tensor(f"blk.{n}.ffn_down.weight", weight(HIDDEN, FFN))
        writer.add_tensor(f"blk.{n}.ffn_down.bias", bias(HIDDEN))
        norm(f"blk.{n}.layer_output_norm")
    # the classification head rank pooling applies to the [CLS] row: tanh(cls x + b), then one
    # logit (cls.output); llama.cpp reads n_cls_out 1 when the header names no labels
    writer.add_tensor("cls.weight", weight(HIDDEN, HIDDEN, 0.5))
    writer.add_tensor("cls.bias", bias(HIDDEN))
    writer.add_tensor("cls.output.weight", weight(1, HIDDEN, 1.0))
    writer.add_tensor("cls.output.bias", bias(1))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {out} ({out.stat().st_size} bytes, {vocab} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
