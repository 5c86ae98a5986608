"""Structured output's cost: decode tok/s under a JSON-schema grammar over tok/s without one,
same prompt, greedy, on each backend; and the time to compile a schema, first use and cached.

    .venv/bin/python bench/structured_bench.py [--backends llama,openvino] [--tokens 128]
        [--reps 5] [--threads N]

The grammar's output is made ~--tokens long (a schema whose one string field may hold up to
4000 characters, a story prompt), and both runs use ignore_eos off and the daemon's own decode
timing ((tokens - 1) / decode_ms), so the ratio is the mask's cost per token: computing the
mask (llguidance), applying it to the 262k logits, and sampling from the masked row. Rounds
alternate free and constrained, so drift in the machine's load hits both alike. Compile time
is the wall time of a Decode with max_tokens=1 and a fresh schema (first use: compile + one
token) minus the same with a schema compiled before (cached). The grammar vocabulary of a model
is built on its first grammar Decode (seconds) and kept: that first call is reported apart.
Writes bench/results/structured.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import MODEL, save_result, start_daemon, stop_daemon

import modeldconn
from modeldconn import ResponseFormat

PROMPT = [{"role": "user", "content": "Write a long story about a dragon, as JSON."}]
STORY = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "story": {"type": "string", "maxLength": 4000}},
    "required": ["title", "story"],
}


def _fresh_schema(i: int) -> dict[str, object]:
    return {
        "type": "object",
        "properties": {f"field_{i}": {"type": "integer"}, "name": {"type": "string"}},
        "required": [f"field_{i}", "name"],
    }


def measure(backend: str, tokens: int, reps: int, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "models").mkdir()
        proc = start_daemon(root, "--threads", str(threads), backend=backend)
        try:
            with modeldconn.Client(data_root=root) as client, client.open_session(MODEL) as s:
                fmt = ResponseFormat.from_schema(STORY)
                s.ensure_prefix(PROMPT)
                started = time.perf_counter()
                s.generate(response_format=fmt, max_tokens=1)
                first_grammar_s = time.perf_counter() - started
                free, bound, free_n, bound_n = [], [], [], []
                for _ in range(reps):
                    s.ensure_prefix(PROMPT)
                    out = s.generate(max_tokens=tokens, ignore_eos=True)
                    free.append(out.final.tokens_per_s)
                    free_n.append(out.final.completion_tokens)
                    s.ensure_prefix(PROMPT)
                    out = s.generate(response_format=fmt, max_tokens=tokens)
                    bound.append(out.final.tokens_per_s)
                    bound_n.append(out.final.completion_tokens)
                first, cached = [], []
                for i in range(reps):
                    schema = ResponseFormat.from_schema(_fresh_schema(i))
                    for into in (first, cached):
                        s.ensure_prefix(PROMPT)
                        started = time.perf_counter()
                        s.generate(response_format=schema, max_tokens=1)
                        into.append((time.perf_counter() - started) * 1000)
        finally:
            stop_daemon(proc)
    ratios = [b / f for b, f in zip(bound, free, strict=True)]
    return {
        f"{backend}_free_tok_s": statistics.median(free),
        f"{backend}_schema_tok_s": statistics.median(bound),
        f"{backend}_schema_over_free": statistics.median(ratios),
        f"{backend}_schema_tokens": statistics.median(bound_n),
        f"{backend}_compile_first_ms": statistics.median(
            [f - c for f, c in zip(first, cached, strict=True)]
        ),
        f"{backend}_decode_1_cached_ms": statistics.median(cached),
        f"{backend}_first_grammar_decode_s": first_grammar_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="llama,openvino")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result: dict[str, object] = {"tokens": args.tokens, "reps": args.reps}
    for backend in args.backends.split(","):
        result.update(measure(backend, args.tokens, args.reps, args.threads))
    save_result("structured", result, width=36)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
