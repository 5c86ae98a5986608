#!/usr/bin/env python3
"""Build the tiny random qwen2 GGUF that the contract tests run on both backends.

llama.cpp and openvino-genai both read this file directly (F16 weights, qwen2 architecture,
byte-level BPE), so one fixture proves one contract on two engines. The output is committed
(`tests/fixtures/tiny-qwen2.gguf`, ~300 KB); run this only to change it:

    .venv/bin/pip install tokenizers gguf numpy
    .venv/bin/python scripts/make_tiny_qwen2.py tests/fixtures/tiny-qwen2.gguf

Everything is seeded, so the same library versions write the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 512
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 128
CONTEXT = 2048
SEED = 20261122
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# llama.cpp's pre-tokenizer for "qwen2"; training with the same split keeps merges consistent
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Qwen2.5-Instruct's tool-capable ChatML template (tokenizer_config.json), less its default
#: "You are Qwen, created by Alibaba Cloud..." system line when the messages bring none (as
#: Qwen3's does), so plain conversations render as plain ChatML: tools in a "# Tools" system
#: block inside <tools></tools>, calls as <tool_call> JSON, results as <tool_response> user turns
CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or \
(message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
CORPUS = """\
The daemon keeps one model hot for every client on the machine. A session holds a prompt
prefix resident, appends only what changed, and streams tokens back as they are decoded.
Once upon a time a small model lived on a laptop. It answered questions about the weather,
the sea, the mountains and the stars. The quick brown fox jumps over the lazy dog.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2048. Punctuation, commas; colons: and periods.
User: hello there! Assistant: hello, how can I help you today? User: tell me a story.
def main():\n    return 0\n\nfor i in range(10):\n    print(i)\n
"""


def train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 20, trainer=trainer)
    return tok


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for raw bytes, inverted."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


def _is_plain(token: str, byte_of: dict[str, int]) -> bool:
    raw = bytes(byte_of[ch] for ch in token)
    return all(b in (0x0A, 0x20) or 0x21 <= b <= 0x7E for b in raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out: Path = parser.parse_args(argv).out

    tok = train_tokenizer()
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert len(tokens) == VOCAB, len(tokens)
    merges = (
        [f"{a} {b}" for a, b in tok.model.get_merges()]
        if hasattr(tok.model, "get_merges")
        else _merges_from_json(tok)
    )
    byte_of = _byte_decoder()
    special_ids = {vocab[s] for s in SPECIALS}
    token_types = [
        gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL for i in range(VOCAB)
    ]

    rng = np.random.default_rng(SEED)

    def weight(rows: int, cols: int, scale: float = 0.12) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float16)

    def bias(n: int) -> np.ndarray:
        return (rng.standard_normal(n) * 0.02).astype(np.float32)

    head_dim = HIDDEN // HEADS
    kv_dim = KV_HEADS * head_dim
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), "qwen2")
    writer.add_name("tiny-qwen2-random")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|endoftext|>"])
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", weight(VOCAB, HIDDEN, 0.5))
    for n in range(LAYERS):
        writer.add_tensor(f"blk.{n}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"blk.{n}.attn_q.weight", weight(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{n}.attn_q.bias", bias(HIDDEN))
        writer.add_tensor(f"blk.{n}.attn_k.weight", weight(kv_dim, HIDDEN))
        writer.add_tensor(f"blk.{n}.attn_k.bias", bias(kv_dim))
        writer.add_tensor(f"blk.{n}.attn_v.weight", weight(kv_dim, HIDDEN))
        writer.add_tensor(f"blk.{n}.attn_v.bias", bias(kv_dim))
        writer.add_tensor(f"blk.{n}.attn_output.weight", weight(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{n}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"blk.{n}.ffn_gate.weight", weight(FFN, HIDDEN))
        writer.add_tensor(f"blk.{n}.ffn_up.weight", weight(FFN, HIDDEN))
        writer.add_tensor(f"blk.{n}.ffn_down.weight", weight(HIDDEN, FFN))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    output = weight(VOCAB, HIDDEN, 0.5)
    # Tokens that are not plain ASCII (and the specials) can never win greedy decoding: generated
    # text stays printable, which keeps stop-string and streaming tests exact on both engines.
    for i, token in enumerate(tokens):
        if i in special_ids or not _is_plain(token, byte_of):
            output[i] = 0
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


def _merges_from_json(tok: Tokenizer) -> list[str]:
    import json

    model = json.loads(tok.to_str())["model"]
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


if __name__ == "__main__":
    sys.exit(main())
