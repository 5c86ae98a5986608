"""Many sessions on one model: modeld side by side with the raw engine, in one run.

    .venv/bin/python bench/many_sessions_bench.py [--tokens 64] [--turns 10]

aggregate  decode tok/s with N = 1, 2, 4, 8 sessions decoding at once through modeldconn, next to
           the raw engine decoding N sequences in one batch (one llama_decode per step)
parking    12 conversations over 4 live contexts (--max-live-sessions 4), round-robin, --turns
           turns each: modeld parking idle sessions vs full recompute (a fresh session fed the
           whole history every turn); total time and median TTFT per turn
Writes bench/results/many_sessions.json and prints a table. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
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
from engine_loop import _init
from harness import MODEL, RESULTS, start_daemon, stop_daemon

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
        _init()
        self.model = ll.llama_model_load_from_file(path.encode(), ll.llama_model_default_params())
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
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mdbench-"))
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
    }
    try:
        daemon = start_daemon(root, "--threads", str(args.threads))
        client = modeldconn.Client(data_root=root)
        raw = RawBatch(client.describe(MODEL).facts.path, args.threads)
        single = raw.aggregate(1, args.tokens)
        for n in (1, 2, 4, 8):
            ours = modeld_aggregate(client, n, args.tokens)
            theirs = raw.aggregate(n, args.tokens)
            result[f"n{n}"] = {
                "modeld_tok_s": round(ours, 1),
                "raw_batched_tok_s": round(theirs, 1),
                "modeld_over_raw": round(ours / theirs, 3),
                "raw_over_raw_single": round(theirs / single, 3),
                "modeld_over_raw_single": round(ours / single, 3),
            }
        client.close()
        stop_daemon(daemon)
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
    result["command"] = "python bench/many_sessions_bench.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "many_sessions.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
