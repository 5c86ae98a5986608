"""OpenVINO benchmark: modeld's openvino backend side by side with openvino-genai in-process.

    .venv/bin/python bench/openvino_bench.py [--reps 5] [--tokens 128] [--prefix 2048]

Gemma 3 270M, int8 IR (scripts/prepare_openvino_ir.py), greedy, same threads, the device's
inference precision and 16-bit KV on both sides, each workload interleaved rep by rep on one quiet
machine:
  decode    tok/s over --tokens tokens: modeld (modeldconn) ÷ LLMPipeline.generate in-process
  warm      TTFT, --prefix tokens resident + a new 32-token suffix: modeld vs LLMPipeline with
            prefix caching on (SchedulerConfig.enable_prefix_caching) on the same token ids
  cold      whole prompt, nothing cached: modeld and in-process; cold ÷ warm
  backends  llama (Q4_K_M GGUF) vs openvino (int8 IR) on the same model through modeldconn
Writes bench/results/openvino.json and prints a table.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from harness import MODEL, N_CTX, TEXT, save_result, start_daemon, stop_daemon

import modeldconn


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def prompt(client: modeldconn.Client, n: int, salt: str = "") -> list[int]:
    return client.tokenize(MODEL, salt + TEXT * (n // 30 + 2), add_special=True)[:n]


def suffix_ids(client: modeldconn.Client, i: int) -> list[int]:
    return client.tokenize(MODEL, f" Question {i}: " + TEXT)[:32]


class InProcess:
    """openvino-genai's own pipelines on the same IR, configured as the daemon compiles it."""

    def __init__(self, ir: Path, threads: int) -> None:
        import openvino as ov
        import openvino_genai as ov_genai

        self.ov, self.genai = ov, ov_genai
        # the daemon's defaults: the device's inference precision, 16-bit KV
        props = {"KV_CACHE_PRECISION": "f16", "INFERENCE_NUM_THREADS": threads}
        self.stateful = ov_genai.LLMPipeline(str(ir), "CPU", **props)
        scheduler = ov_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = True
        scheduler.cache_size = 1  # GB: room for every prompt of this run
        self.cached = ov_genai.LLMPipeline(str(ir), "CPU", scheduler_config=scheduler, **props)

    def _inputs(self, ids: list[int]) -> Any:
        tensor = self.ov.Tensor(np.asarray([ids], dtype=np.int64))
        mask = self.ov.Tensor(np.ones((1, len(ids)), dtype=np.int64))
        return self.genai.TokenizedInputs(tensor, mask)

    def _config(self, n: int) -> Any:
        config = self.genai.GenerationConfig(max_new_tokens=n, do_sample=False, ignore_eos=True)
        config.apply_chat_template = False
        return config

    def decode(self, pipe: Any, ids: list[int], n: int) -> tuple[list[int], float, float]:
        """Tokens, seconds to the first token and tok/s after it, timed by a streamer."""
        stamps: list[float] = []

        def streamer(_: str) -> bool:
            stamps.append(time.perf_counter())
            return False

        t0 = time.perf_counter()
        result = pipe.generate(self._inputs(ids), self._config(n), streamer)
        tokens = [int(t) for t in result.tokens[0]]
        # text streamers hold back incomplete words: time by the token count, not the callbacks
        first = stamps[0] if stamps else time.perf_counter()
        end = time.perf_counter()
        return tokens, first - t0, (len(tokens) - 1) / max(end - first, 1e-9)

    def first_token_s(self, pipe: Any, ids: list[int]) -> float:
        t0 = time.perf_counter()
        pipe.generate(self._inputs(ids), self._config(1))
        return time.perf_counter() - t0


def bench_decode(
    session: modeldconn.Session, here: InProcess, base: list[int], reps: int, n: int
) -> dict[str, Any]:
    modeld_tps, inproc_tps = [], []
    same = True
    for _ in range(reps):
        session.ensure_prefix(base)
        done = session.generate(max_tokens=n, ignore_eos=True)
        modeld_tps.append((n - 1) / (done.final.decode_ms / 1000))
        tokens, _, tps = here.decode(here.stateful, base, n)
        inproc_tps.append(tps)
        same &= list(done.token_ids) == tokens
    return {
        "decode_tokens": n,
        "modeld_tok_s": med(modeld_tps),
        "llmpipeline_tok_s": med(inproc_tps),
        "modeld_over_llmpipeline": med(
            [m / p for m, p in zip(modeld_tps, inproc_tps, strict=True)]
        ),
        "greedy_tokens_identical": same,
    }


def bench_ttft(
    client: modeldconn.Client, session: modeldconn.Session, here: InProcess, reps: int, n: int
) -> dict[str, Any]:
    prefix = prompt(client, n)
    suffixes = [suffix_ids(client, i) for i in range(reps + 1)]
    session.ensure_prefix(prefix)
    here.first_token_s(here.cached, prefix + suffixes[0])  # the pipeline's cache holds P now
    warm, inproc, gaps = [], [], []
    for i, suffix in enumerate(suffixes):
        t0 = time.perf_counter()
        session.ensure_prefix(prefix)
        assert next(iter(session.decode(max_tokens=1, suffix=suffix))).token_ids
        warm_s = time.perf_counter() - t0
        inproc_s = here.first_token_s(here.cached, prefix + suffix)
        if i == 0:
            continue  # warm-up
        warm.append(warm_s * 1000)
        inproc.append(inproc_s * 1000)
        gaps.append((warm_s - inproc_s) * 1000)
    cold, cold_inproc = [], []
    for i in range(max(2, reps // 2)):
        fresh_prompt = prompt(client, n, salt=f"Cold run {i}. ") + suffixes[0]
        t0 = time.perf_counter()
        with client.open_session(MODEL, n_ctx=N_CTX) as fresh:
            assert fresh.ensure_prefix(fresh_prompt).reused == 0
            next(iter(fresh.decode(max_tokens=1)))
        cold.append((time.perf_counter() - t0) * 1000)
        cold_inproc.append(here.first_token_s(here.stateful, fresh_prompt) * 1000)
    return {
        "prefix_tokens": n,
        "suffix_tokens": 32,
        "warm_ttft_ms": med(warm),
        "llmpipeline_prefix_cached_ttft_ms": med(inproc),
        "warm_minus_llmpipeline_ms": med(warm) - med(inproc),
        "warm_minus_llmpipeline_pairwise_median_ms": med(gaps),
        "cold_ttft_ms": med(cold),
        "llmpipeline_cold_ttft_ms": med(cold_inproc),
        "cold_over_warm": med(cold) / med(warm),
    }


def bench_backends(
    clients: dict[str, modeldconn.Client], reps: int, n: int, prefix_n: int
) -> dict[str, Any]:
    """The same model and workload through modeldconn on each backend, interleaved."""
    tps: dict[str, list[float]] = {name: [] for name in clients}
    ttft: dict[str, list[float]] = {name: [] for name in clients}
    sessions = {name: c.open_session(MODEL, n_ctx=N_CTX) for name, c in clients.items()}
    try:
        for name, session in sessions.items():
            session.ensure_prefix(prompt(clients[name], prefix_n))
        for i in range(reps + 1):
            for name, session in sessions.items():
                prefix = prompt(clients[name], prefix_n)
                t0 = time.perf_counter()
                session.ensure_prefix(prefix)
                stream = session.decode(
                    max_tokens=n, ignore_eos=True, suffix=suffix_ids(clients[name], i)
                )
                first = next(iter(stream))
                t1 = time.perf_counter()
                final = [c for c in stream][-1].final
                assert first.token_ids and final is not None
                if i:
                    ttft[name].append((t1 - t0) * 1000)
                    tps[name].append((n - 1) / (final.decode_ms / 1000))
    finally:
        for session in sessions.values():
            session.close()
    out: dict[str, Any] = {}
    for name in clients:
        out[f"{name}_decode_tok_s"] = med(tps[name])
        out[f"{name}_warm_ttft_ms"] = med(ttft[name])
    out["openvino_over_llama_decode"] = med(
        [o / ll for o, ll in zip(tps["openvino"], tps["llama"], strict=True)]
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prefix", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    roots = {b: Path(tempfile.mkdtemp(prefix=f"mdbench-{b[:2]}-")) for b in ("openvino", "llama")}
    daemons = {
        b: start_daemon(root, "--threads", str(args.threads), backend=b)
        for b, root in roots.items()
    }
    try:
        clients = {b: modeldconn.Client(data_root=root) for b, root in roots.items()}
        client = clients["openvino"]
        ir = Path(client.describe(MODEL).facts.path).resolve()
        here = InProcess(ir, args.threads)
        base = prompt(client, 64)
        with client.open_session(MODEL, n_ctx=N_CTX) as session:
            result: dict[str, Any] = {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "model": f"{MODEL} int8 IR ({ir.name})",
                "threads": args.threads,
                **bench_decode(session, here, base, args.reps, args.tokens),
                **bench_ttft(client, session, here, args.reps, args.prefix),
            }
        del here
        result.update(bench_backends(clients, args.reps, args.tokens, args.prefix))
        result["command"] = "python bench/openvino_bench.py " + " ".join(sys.argv[1:])
    finally:
        for proc in daemons.values():
            stop_daemon(proc)
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)
    save_result("openvino", result, width=42)


if __name__ == "__main__":
    main()
