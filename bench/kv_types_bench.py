"""KV cache types on the llama backend: KV bytes per token and decode speed for f16, q8_0, q4_0.

    .venv/bin/python bench/kv_types_bench.py                     # Gemma 3 270M (the test cache)
    .venv/bin/python bench/kv_types_bench.py --tokens 128 --decode 16   # smoke

Engine level, in process (no daemon): one LlamaModel, one session per type in turn. KV bytes per
token are llama.cpp's own: ``llama_state_seq_get_size`` of a session holding N and 2N tokens,
the difference over N (what parking and snapshots write; the arithmetic admission charges is
``ModelFacts.kv_bytes_per_token_at``, printed beside it). Decode is greedy one-token steps after
the prompt, as a session decodes alone, the three types taking turns every 8 tokens (side by
side, so a busy machine slows them alike). Prints a table and writes bench/results/kv_types.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from harness import save_result

from modeld.backends._base import SamplingParams
from modeld.backends.llama._backend import LlamaBackend
from modeld.models._facts import ModelSpec, facts_from_gguf

TYPES = ("f16", "q8_0", "q4_0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma)")
    parser.add_argument("--tokens", type=int, default=256, help="N: the prompt is 2N tokens")
    parser.add_argument("--decode", type=int, default=64, help="tokens decoded per type (x8)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    path = args.model
    if path is None:
        from served_models import gemma_gguf

        path = gemma_gguf()
    facts = facts_from_gguf(path, name=path.stem, digest="bench")
    model = LlamaBackend(n_threads=args.threads).load(ModelSpec(facts))
    text = "".join(
        f"Entry {i}: the archive kept {i * 7} letters about the river.\n" for i in range(400)
    )
    n = args.tokens
    prompt = model.tokenize(text, True)[: 2 * n]
    assert len(prompt) == 2 * n, "the text is too short for --tokens"
    rows: list[dict[str, Any]] = []
    sessions = {}
    try:
        for kv_type in TYPES:
            session = sessions[kv_type] = model.open_session(4 * n + args.decode, kv_type)
            session.prefill(prompt[:n])
            short = session.lane.state_size(session.seq)
            session.prefill(prompt[n:])
            long = session.lane.state_size(session.seq)
            rows.append(
                {
                    "kv_cache_type": kv_type,
                    "kv_bytes_per_token_measured": (long - short) / n,
                    "kv_bytes_per_token_arithmetic": facts.kv_bytes_per_token_at(kv_type),
                    "decode_rows_exact": session.lane.seqs,
                }
            )
        # decode in rounds of 8 tokens, the types taking turns, so whatever else runs on the
        # machine slows each of them alike
        seconds = dict.fromkeys(TYPES, 0.0)
        out: dict[str, list[int]] = {t: [] for t in TYPES}
        for _ in range(0, args.decode, 8):
            for kv_type, session in sessions.items():
                started = time.perf_counter()
                for _ in range(8):
                    sampler = session.sampler(SamplingParams(), prompt + out[kv_type])
                    token = sampler.sample()
                    sampler.close()
                    out[kv_type].append(token)
                    session.prefill([token])
                seconds[kv_type] += time.perf_counter() - started
        for row in rows:
            kv_type = row["kv_cache_type"]
            row["decode_tok_s"] = len(out[kv_type]) / seconds[kv_type]
            row["greedy_text"] = model.detokenize(out[kv_type][:16])
    finally:
        for session in sessions.values():
            session.close()
        model.close()
    f16 = rows[0]["kv_bytes_per_token_measured"]
    print(
        f"{facts.name}: {2 * n}-token prompt, {args.decode} greedy tokens, {args.threads} threads"
    )
    print("type   KV B/token (llama.cpp)  arithmetic  vs f16  decode tok/s")
    for row in rows:
        print(
            f"{row['kv_cache_type']:<6} {row['kv_bytes_per_token_measured']:>22,.0f}"
            f"  {row['kv_bytes_per_token_arithmetic']:>10,}"
            f"  {row['kv_bytes_per_token_measured'] / f16:>6.3f}  {row['decode_tok_s']:>12.1f}"
        )
    save_result("kv_types", {"model": facts.name, "tokens": 2 * n, "rows": rows})
    for row in rows:
        print(f"{row['kv_cache_type']:<6} {row['greedy_text']!r}")


if __name__ == "__main__":
    main()
