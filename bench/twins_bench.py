"""Clients that start together on one long prefix (issue 20's W5), two source trees side by
side: aggregate tok/s and each client's turn time, with and without twin prompts computed once.

    .venv/bin/python bench/twins_bench.py --baseline-src /tmp/modeld-before [--clients 4]
        [--reps 3] [--shared 28] [--tokens 64] [--threads 2]

Each rep starts one daemon per tree (llama backend, gemma3-270m, --threads, a scratch data
root; PYTHONPATH selects the tree, as in before_after.py), in alternating order. --clients
threads open a session each, wait at a barrier, then EnsurePrefix a ~1k-token shared briefing
(``--shared`` repetitions of the harness text, ~36 tokens each) plus a line of their own, and
Decode --tokens tokens (ignore_eos).
Aggregate = all generated tokens / wall time from the barrier to the last client's end; it
includes the prefills, which is where twins differ. Reports medians and the current/baseline
ratio of medians, and the daemon's own counters (prefix shares, decode rows per call). Writes
bench/results/twins.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import MODEL, TEXT, save_result, start_daemon, stop_daemon

import modeldconn

REPO = Path(__file__).resolve().parent.parent


def one_round(src: Path, clients: int, shared: int, tokens: int, threads: int) -> dict[str, float]:
    briefing = "Shared briefing for every agent.\n" + TEXT * shared
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src / "src")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            (root / "models").mkdir()
            proc = start_daemon(root, "--threads", str(threads))
            try:
                with modeldconn.Client(data_root=root) as client:
                    before = client.status()
                    sessions = [client.open_session(MODEL, n_ctx=4096) for _ in range(clients)]
                    barrier = threading.Barrier(clients)
                    made: list[int] = []
                    ends: list[float] = []

                    def run(i: int) -> None:
                        barrier.wait()
                        sessions[i].ensure_prefix(f"{briefing}\nAgent {i}: list three tasks.\n")
                        out = sessions[i].generate(max_tokens=tokens, ignore_eos=True)
                        made.append(out.final.completion_tokens)
                        ends.append(time.perf_counter())

                    workers = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
                    start = time.perf_counter()
                    for worker in workers:
                        worker.start()
                    for worker in workers:
                        worker.join()
                    wall = max(ends) - start
                    after = client.status()
                    for session in sessions:
                        session.close()
            finally:
                stop_daemon(proc)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    calls = after.decode_calls - before.decode_calls
    return {
        "aggregate_tok_s": sum(made) / wall,
        "wall_s": wall,
        "prefix_shares": float(after.prefix_shares - before.prefix_shares),
        "rows_per_decode_call": (after.decode_rows - before.decode_rows) / max(calls, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--current-src", type=Path, default=REPO)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--shared", type=int, default=28)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    trees = {"current": args.current_src, "baseline": args.baseline_src}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for rep in range(args.reps):
        order = list(trees) if rep % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(
                one_round(trees[name], args.clients, args.shared, args.tokens, args.threads)
            )
    result: dict[str, object] = {"clients": args.clients, "reps": args.reps}
    for name, rounds in runs.items():
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            result[f"{name}_{key}"] = statistics.median(values)
            result[f"{name}_{key}_range"] = f"{min(values):.2f}-{max(values):.2f}"
    current = result["current_aggregate_tok_s"]
    baseline = result["baseline_aggregate_tok_s"]
    assert isinstance(current, float) and isinstance(baseline, float)
    result["aggregate_current_over_baseline"] = current / baseline
    save_result("twins", result, width=40)


if __name__ == "__main__":
    main()
