"""Many sessions on one model: modeld side by side with the raw engine, in one run.

    .venv/bin/python bench/many_sessions_bench.py [--tokens 64] [--turns 10] [--reps 3]
    .venv/bin/python bench/many_sessions_bench.py --backend openvino [--tokens 64] [--reps 3]

aggregate  decode tok/s with N = 1, 2, 4, 8 sessions decoding at once through modeldconn, next to
           the raw engine decoding N sequences in one batch: llama.cpp (one llama_decode per
           step for all), or on openvino, openvino-genai's ContinuousBatchingPipeline on the same
           IR (its decode time: N sequences of --tokens tokens less the same with 1 token)
parking    (llama) 12 conversations over 4 live contexts (--max-live-sessions 4), round-robin,
           --turns turns each: modeld parking idle sessions vs full recompute (a fresh session
           fed the whole history every turn); total time and median TTFT per turn
Writes bench/results/many_sessions[_openvino].json and prints a table. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import llama_cpp as ll
from engine_loop import load_weights
from harness import MODEL, save_result, start_daemon, stop_daemon

import modeldconn


def prompt(i: int) -> str:
    return f"Letter {i}. Dear friend, the harvest this year was better than the last. " * 3


def modeld_aggregate(client: modeldconn.Client, n: int, tokens: int) -> float:
    sessions = [client.open_session(MODEL) for _ in range(n)]
    for i, s in enumerate(sessions):
        s.ensure_prefix(prompt(i))
    barrier = threading.Barrier(n + 1)
    done: list[int] = []

    def run(s: modeldconn.Session) -> None:
        barrier.wait()
        out = s.generate(max_tokens=tokens, ignore_eos=True)
        done.append(out.final.completion_tokens)

    threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for s in sessions:
        s.close()
    assert sum(done) == n * tokens, "a session produced too few tokens: a failure, not speed"
    return n * tokens / elapsed


class RawBatch:
    """The engine alone: N sequences in one context, one llama_decode per step for all."""

    def __init__(self, path: str, threads: int) -> None:
        self.model = load_weights(path)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.threads = threads

    def aggregate(self, n: int, tokens: int) -> float:
        p = ll.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = 1024 * n, 512, 512, n
        p.n_threads = p.n_threads_batch = self.threads
        p.swa_full = True
        ctx = ll.llama_init_from_model(self.model, p)
        batch = ll.llama_batch_init(512, 0, n)
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())

        def decode(items: list[tuple[int, int, int, bool]]) -> None:
            batch.n_tokens = len(items)
            for i, (tok, pos, seq, logits) in enumerate(items):
                batch.token[i], batch.pos[i] = tok, pos
                batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, seq, logits
            assert ll.llama_decode(ctx, batch) == 0

        prompts = []
        for s in range(n):
            raw = prompt(s).encode()
            buf = (ll.llama_token * 512)()
            k = ll.llama_tokenize(self.vocab, raw, len(raw), buf, 512, True, True)
            prompts.append(list(buf[:k]))
            # all but the last token now; the last ones go together, giving every sequence logits
            decode([(t, i, s, False) for i, t in enumerate(prompts[-1][:-1])])
        decode([(p_[-1], len(p_) - 1, s, True) for s, p_ in enumerate(prompts)])
        pos = [len(p_) for p_ in prompts]
        t0 = time.perf_counter()
        for _ in range(tokens):
            toks = [ll.llama_sampler_sample(chain, ctx, i) for i in range(n)]
            decode([(t, pos[s], s, True) for s, t in enumerate(toks)])
            pos = [x + 1 for x in pos]
        elapsed = time.perf_counter() - t0
        ll.llama_sampler_free(chain)
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)
        return n * tokens / elapsed


class RawOpenVinoBatch:
    """openvino-genai's continuous batching on the same IR: N prompts in one generate call."""

    def __init__(self, ir: str, threads: int, precision: str) -> None:
        import openvino_genai as ov_genai

        self.genai = ov_genai
        scheduler = ov_genai.SchedulerConfig()
        scheduler.cache_size = 1  # GB of KV: ample for 8 short sequences
        # the daemon's defaults: the device's inference precision, 16-bit KV
        props: dict[str, Any] = {"KV_CACHE_PRECISION": "f16", "INFERENCE_NUM_THREADS": threads}
        if precision:  # the same --precision as modeld's
            props["INFERENCE_PRECISION_HINT"] = precision
        self.pipe = ov_genai.ContinuousBatchingPipeline(ir, scheduler, "CPU", props)

    def _run(self, n: int, tokens: int) -> float:
        config = self.genai.GenerationConfig(max_new_tokens=tokens, do_sample=False)
        config.ignore_eos = True
        config.apply_chat_template = False
        t0 = time.perf_counter()
        results = self.pipe.generate([prompt(i) for i in range(n)], [config] * n)
        elapsed = time.perf_counter() - t0
        # the pipeline's perf metrics count the whole batch's tokens
        generated = results[0].perf_metrics.get_num_generated_tokens()
        assert generated == n * tokens, (generated, n * tokens)
        return elapsed

    def aggregate(self, n: int, tokens: int) -> float:
        self._run(n, tokens)  # warm-up: the first call of a shape compiles kernels
        decode_s = self._run(n, tokens) - self._run(n, 1)
        return n * (tokens - 1) / decode_s


def conversations(client: modeldconn.Client, turns: int, parking: bool) -> dict[str, float]:
    n = 12
    histories = [
        client.tokenize(MODEL, f"Diary {i}. " + prompt(i), add_special=True) for i in range(n)
    ]
    sessions = [client.open_session(MODEL) for _ in range(n)] if parking else []
    before = client.status()
    ttfts = []
    t0 = time.perf_counter()
    for turn in range(turns):
        for i in range(n):
            histories[i] += client.tokenize(MODEL, f"\nDay {turn + 1}, question {i}:")
            start = time.perf_counter()
            if parking:
                session = sessions[i]
                session.ensure_prefix(histories[i])
                stream = session.decode(max_tokens=16, ignore_eos=True)
            else:
                session = client.open_session(MODEL)
                session.ensure_prefix(histories[i])
                stream = session.decode(max_tokens=16, ignore_eos=True)
            ids: list[int] = []
            for chunk in stream:
                if not ids and chunk.token_ids:
                    ttfts.append((time.perf_counter() - start) * 1000)
                ids.extend(chunk.token_ids)
            histories[i] += ids
            if not parking:
                session.close()
    total = time.perf_counter() - t0
    status = client.status()
    for s in sessions:
        s.close()
    return {
        "total_s": round(total, 2),
        "ttft_p50_ms": round(statistics.median(ttfts), 1),
        "parks": status.parks - before.parks,
        "restores": status.restores - before.restores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3, help="runs per N, medians reported")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backend", choices=["llama", "openvino"], default="llama")
    parser.add_argument(
        "--decode-batch-rows", type=int, default=0, help="modeld's (0: as many as are exact)"
    )
    parser.add_argument("--precision", default="", help="openvino: modeld's --precision")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mdbench-"))
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
    }
    try:
        daemon = start_daemon(
            root,
            "--threads",
            str(args.threads),
            "--decode-batch-rows",
            str(args.decode_batch_rows),
            *(["--precision", args.precision] if args.precision else []),
            backend=args.backend,
        )
        client = modeldconn.Client(data_root=root)
        path = client.describe(MODEL).facts.path
        raw: RawBatch | RawOpenVinoBatch = (
            RawOpenVinoBatch(path, args.threads, args.precision)
            if args.backend == "openvino"
            else RawBatch(path, args.threads)
        )
        single = 0.0
        for n in (1, 2, 4, 8):
            modeld_aggregate(client, n, 8)  # warm-ups: first use of each batch shape
            raw.aggregate(n, 8)
            ours_runs, theirs_runs = [], []
            for _ in range(args.reps):  # interleaved, so drift hits both sides alike
                ours_runs.append(modeld_aggregate(client, n, args.tokens))
                theirs_runs.append(raw.aggregate(n, args.tokens))
            ours, theirs = statistics.median(ours_runs), statistics.median(theirs_runs)
            single = single or theirs
            result[f"n{n}"] = {
                "modeld_tok_s": round(ours, 1),
                "modeld_range": [round(min(ours_runs), 1), round(max(ours_runs), 1)],
                "raw_batched_tok_s": round(theirs, 1),
                "raw_range": [round(min(theirs_runs), 1), round(max(theirs_runs), 1)],
                "modeld_over_raw": round(ours / theirs, 3),
                "modeld_over_raw_pairs": round(
                    statistics.median(o / t for o, t in zip(ours_runs, theirs_runs, strict=True)),
                    3,
                ),
                "raw_over_raw_single": round(theirs / single, 3),
                "modeld_over_raw_single": round(ours / single, 3),
            }
        status = client.status()
        result["modeld_decode_rows_per_call"] = round(
            status.decode_rows / max(1, status.decode_calls), 2
        )
        (model,) = status.models
        result["modeld_batch_rows"] = model.decode_batch_rows
        result["modeld_batch_exact"] = model.decode_batch_exact
        client.close()
        stop_daemon(daemon)
        if args.backend == "openvino":
            suffix = f"_{args.precision}" if args.precision else ""
            finish(result, f"many_sessions_openvino{suffix}")
            return
        daemon = start_daemon(root, "--threads", str(args.threads), "--max-live-sessions", "4")
        client = modeldconn.Client(data_root=root)
        parked = conversations(client, args.turns, parking=True)
        recompute = conversations(client, args.turns, parking=False)
        result["conversations_12_over_4_live"] = {
            "turns": args.turns,
            "parking": parked,
            "full_recompute": recompute,
            "recompute_over_parking_total": round(recompute["total_s"] / parked["total_s"], 2),
        }
        client.close()
        stop_daemon(daemon)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    finish(result, "many_sessions")


def finish(result: dict[str, Any], name: str) -> None:
    result["command"] = "python bench/many_sessions_bench.py " + " ".join(sys.argv[1:])
    save_result(name, result)


if __name__ == "__main__":
    main()
