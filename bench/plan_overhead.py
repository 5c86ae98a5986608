"""What one llama.cpp context of modeld's lane shape costs beyond its KV: the figure the plan's
``overhead_bytes`` is calibrated on (README, Plans).

Loads MODEL (a GGUF) as the llama backend does, opens one context of SEQS sequences of N_CTX
cells each (``backends.llama._lane``), decodes a 512-token batch (which touches the compute
buffers), and prints the process's RSS growth less the KV, beside the plan's formula.

    .venv/bin/python bench/plan_overhead.py tests/fixtures/tiny-qwen2.gguf --n-ctx 1024
"""

from __future__ import annotations

import argparse
from pathlib import Path

import llama_cpp as ll
import psutil

from modeld.backends.llama._backend import _init_llama_once, weight_params
from modeld.backends.llama._lane import _context
from modeld.models._facts import facts_from_gguf
from modeld.models._plan import overhead_bytes

MiB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--seqs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    facts = facts_from_gguf(args.model, name=args.model.stem, digest="")
    _init_llama_once()
    process = psutil.Process()
    model = ll.llama_model_load_from_file(str(args.model).encode(), weight_params())
    loaded = process.memory_info().rss
    ctx = _context(model, args.n_ctx, args.seqs, 512, args.threads, "f16")
    n = min(512, args.n_ctx)
    batch = ll.llama_batch_init(n, 0, 1)
    batch.n_tokens = n
    for i in range(n):
        batch.token[i] = 10 + i % 100
        batch.pos[i] = i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = i == n - 1
    if ll.llama_decode(ctx, batch) != 0:
        raise SystemExit("llama_decode failed")
    grown = process.memory_info().rss - loaded
    kv = args.n_ctx * args.seqs * facts.kv_bytes_per_token
    print(
        f"{args.model.name}: n_ctx {args.n_ctx} x {args.seqs} seqs: context RSS "
        f"{grown / MiB:.1f} MiB, KV {kv / MiB:.1f} MiB, overhead measured "
        f"{(grown - kv) / MiB:.1f} MiB, planned {overhead_bytes(facts, args.n_ctx) / MiB:.1f} MiB"
    )


if __name__ == "__main__":
    main()
