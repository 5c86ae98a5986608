"""An in-process baseline in a process of its own, driven over stdin/stdout (JSON lines).

    python bench/inproc_worker.py --kind native|llama --model PATH --threads 2 --n-ctx 4096

Each line in is ``{"tokens": [...], "n": N}``; each line out is the turn's tokens and the
timings taken in here, around the engine calls alone (no pipe, no RPC). A process of its own gives
each baseline its own peak RSS and keeps it off the harness's interpreter.

native  the low-level llama.cpp loop modeld itself runs (engine_loop.NativeLoop): one context,
        the resident tokens kept up to the longest common prefix, greedy
llama   llama-cpp-python's ``Llama.generate`` (which reuses its longest common prefix itself)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def native_turns(model: str, threads: int, n_ctx: int) -> Iterator[None]:
    from engine_loop import NativeLoop

    loop = NativeLoop(model, n_ctx=n_ctx, n_threads=threads)
    resident: list[int] = []
    yield
    while True:
        request = yield
        tokens, n = request["tokens"], request["n"]
        t0 = time.perf_counter()
        # keep what matches, always recomputing the last prompt token for fresh logits
        keep = min(common_prefix(resident, tokens), len(tokens) - 1)
        loop.truncate(keep)
        loop.prefill(tokens[keep:])
        prefilled = time.perf_counter()
        out, first_sample_s, decode_s = loop.generate(n)
        ttft = prefilled - t0 + first_sample_s
        resident = tokens + out[:-1]
        reply(out, loop.piece_text(out), ttft, (len(out) - 1) / max(decode_s, 1e-9), keep)


def llama_turns(model: str, threads: int, n_ctx: int) -> Iterator[None]:
    from engine_loop import load_weights_as_modeld
    from llama_cpp import Llama

    load_weights_as_modeld()
    llm = Llama(model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    yield
    while True:
        request = yield
        tokens, n = request["tokens"], request["n"]
        reused = min(common_prefix(list(llm._input_ids), tokens), len(tokens) - 1)
        out: list[int] = []
        t0 = time.perf_counter()
        first = t0
        for token in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            if not out:
                first = time.perf_counter()
            # Llama.generate never stops by itself: greedy past EOS, as every system is asked
            out.append(int(token))
            if len(out) == n:
                break
        end = time.perf_counter()
        text = llm.detokenize(out).decode("utf-8", errors="replace")
        reply(out, text, first - t0, (len(out) - 1) / max(end - first, 1e-9), reused)


def reply(tokens: list[int], text: str, ttft_s: float, decode_tok_s: float, reused: int) -> None:
    line = {
        "tokens": tokens,
        "text": text,
        "ttft_s": ttft_s,
        "decode_tok_s": decode_tok_s,
        "reused": reused,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["native", "llama"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args()
    make = native_turns if args.kind == "native" else llama_turns
    turns = make(args.model, args.threads, args.n_ctx)
    next(turns)  # loads the model
    next(turns)
    sys.stdout.write('{"ready": true}\n')
    sys.stdout.flush()
    for line in sys.stdin:
        turns.send(json.loads(line))


if __name__ == "__main__":
    main()
