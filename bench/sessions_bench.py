"""Sessions benchmark: modeld (through modeldconn) side by side with the engine in-process.

    .venv/bin/python bench/sessions_bench.py [--reps 5] [--tokens 128] [--prefix 2048]

Workloads, each run interleaved rep by rep on one quiet machine, greedy, same model and threads:
  decode   tok/s over --tokens tokens: modeld ÷ native llama.cpp loop, and ÷ Llama.create_completion
  warm     TTFT with a --prefix-token prefix resident and a new 32-token suffix: modeld vs the
           engine's own in-process cost for the same suffix on the same resident prefix
  cold     fresh session, whole prompt, first token: cold ÷ warm
  rpc      unary round trip (Status) over the Unix socket, p50 / p99
Writes bench/results/sessions.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from engine_loop import NativeLoop
from harness import MODEL, N_CTX, TEXT, save_result, start_daemon, stop_daemon

import modeldconn


def prompt_tokens(loop: NativeLoop, n: int, salt: str = "") -> list[int]:
    ids = loop.tokenize(salt + TEXT * (n // 30 + 2), add_special=True)
    return ids[:n]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_decode(
    session: modeldconn.Session, loop: NativeLoop, llama: Any, reps: int, n: int
) -> dict[str, float]:
    prompt = prompt_tokens(loop, 64)
    modeld_tps, native_tps, llama_tps = [], [], []
    same = True
    for _ in range(reps):
        session.ensure_prefix(prompt)
        done = session.generate(max_tokens=n, ignore_eos=True)
        modeld_tps.append((n - 1) / (done.final.decode_ms / 1000))
        loop.truncate(0)
        loop.prefill(prompt)
        tokens, _, decode_s = loop.generate(n)
        native_tps.append((n - 1) / decode_s)
        same &= list(done.token_ids) == tokens
        out = llama.create_completion(
            prompt,
            max_tokens=n,
            temperature=0.0,
            stream=True,
        )
        first = None
        count = 0
        for _chunk in out:
            count += 1
            if first is None:
                first = time.perf_counter()
        assert first is not None
        llama_tps.append((count - 1) / (time.perf_counter() - first))
    return {
        "decode_tokens": n,
        "modeld_tok_s": med(modeld_tps),
        "native_tok_s": med(native_tps),
        "create_completion_tok_s": med(llama_tps),
        # ratios pair by pair (each rep ran the systems back to back), then the median
        "modeld_over_native": med([m / n for m, n in zip(modeld_tps, native_tps, strict=True)]),
        "modeld_over_create_completion": med(
            [m / c for m, c in zip(modeld_tps, llama_tps, strict=True)]
        ),
        "greedy_tokens_identical": same,
    }


def bench_ttft(
    session: modeldconn.Session,
    loop: NativeLoop,
    client: modeldconn.Client,
    reps: int,
    prefix_n: int,
) -> dict[str, float]:
    prefix = prompt_tokens(loop, prefix_n)
    suffixes = [
        loop.tokenize(f" Question {i}: " + TEXT, add_special=False)[:32] for i in range(reps + 1)
    ]
    session.ensure_prefix(prefix)
    loop.truncate(0)
    loop.prefill(prefix)
    warm, engine, cold, gaps = [], [], [], []
    for i, suffix in enumerate(suffixes):
        t0 = time.perf_counter()
        session.ensure_prefix(prefix)  # reuses the prefix, drops the last turn's suffix
        first = next(iter(session.decode(max_tokens=1, suffix=suffix)))
        warm_s = time.perf_counter() - t0
        assert first.token_ids
        t0 = time.perf_counter()
        loop.truncate(prefix_n)
        loop.prefill(suffix)
        loop.sample()
        engine_s = time.perf_counter() - t0
        if i == 0:
            continue  # warm-up
        warm.append(warm_s * 1000)
        engine.append(engine_s * 1000)
        gaps.append((warm_s - engine_s) * 1000)
    for i in range(max(2, reps // 2)):
        t0 = time.perf_counter()
        # a prompt no session holds any part of (the daemon would otherwise share the warm
        # session's KV, and this would not be cold)
        cold_prefix = prompt_tokens(loop, prefix_n, salt=f"Cold run {i}. ")
        with client.open_session(MODEL, n_ctx=N_CTX) as fresh:
            result = fresh.ensure_prefix(cold_prefix + suffixes[i])
            assert result.reused == 0
            next(iter(fresh.decode(max_tokens=1)))
        cold.append((time.perf_counter() - t0) * 1000)
    return {
        "prefix_tokens": prefix_n,
        "suffix_tokens": 32,
        "warm_ttft_ms": med(warm),
        "engine_suffix_ms": med(engine),
        "warm_minus_engine_ms": med(warm) - med(engine),
        "warm_minus_engine_pairwise_median_ms": med(gaps),
        "cold_ttft_ms": med(cold),
        "cold_over_warm": med(cold) / med(warm),
    }


def bench_rpc(client: modeldconn.Client, count: int) -> dict[str, float]:
    for _ in range(50):
        client.status()
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        client.status()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "rpc_p50_ms": samples[len(samples) // 2],
        "rpc_p99_ms": samples[int(len(samples) * 0.99)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prefix", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mdbench-"))
    daemon = start_daemon(root, "--threads", str(args.threads))
    try:
        client = modeldconn.Client(data_root=root)
        path = client.describe(MODEL).facts.path
        from engine_loop import load_weights_as_modeld
        from llama_cpp import Llama

        load_weights_as_modeld()
        loop = NativeLoop(path, n_ctx=N_CTX, n_threads=args.threads)
        llama = Llama(
            path, n_ctx=N_CTX, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
        )
        with client.open_session(MODEL, n_ctx=N_CTX) as session:
            result = {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "model": MODEL,
                "threads": args.threads,
                **bench_decode(session, loop, llama, args.reps, args.tokens),
                **bench_ttft(session, loop, client, args.reps, args.prefix),
                **bench_rpc(client, 500),
                "command": "python bench/sessions_bench.py " + " ".join(sys.argv[1:]),
            }
    finally:
        stop_daemon(daemon)
        shutil.rmtree(root, ignore_errors=True)
    save_result("sessions", result)


if __name__ == "__main__":
    main()
