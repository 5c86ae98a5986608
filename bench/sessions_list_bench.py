"""ListSessions latency with many sessions open (issue 18: p50 with 1,000 sessions).

    .venv/bin/python bench/sessions_list_bench.py [--sessions 1000] [--calls 200] [--n-ctx 64]

Starts one daemon on a scratch data root serving the tiny qwen2 fixture (llama backend; the
listing reads only session-table fields, so the model does not matter), opens --sessions
sessions of --n-ctx tokens from one client, each with a prompt of its own (so every tape hash
differs); all but --max-live-sessions of them park to RAM as the next one opens. Then calls
ListSessions (as the operator: every session) --calls times and reports the client-side
latency: the first call (every tape hashed once) and p50 / p95 / max of the rest (hashes cached
per tape version), and the reply's size. Writes bench/results/sessions_list.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import save_result

import modeldconn

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "tiny-qwen2.gguf"


def _serve(root: Path, max_live: int) -> subprocess.Popen[bytes]:
    (root / "models").mkdir()
    (root / "models" / "tiny.gguf").symlink_to(TINY)
    command = [sys.executable, "-m", "modeld", "serve", "--data-root", str(root)]
    command += ["--backend", "llama", "--model", "tiny", "--threads", "1"]
    command += ["--max-live-sessions", str(max_live), "--idle-park", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not modeldconn.available(data_root=root):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the daemon did not start")
        time.sleep(0.1)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--n-ctx", type=int, default=64)
    parser.add_argument("--max-live-sessions", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        proc = _serve(Path(scratch), args.max_live_sessions)
        try:
            with modeldconn.Client(data_root=scratch) as client:
                started = time.perf_counter()
                for i in range(args.sessions):
                    session = client.open_session("tiny", n_ctx=args.n_ctx)
                    session.ensure_prefix([1 + i % 97, 2 + i % 89, 3 + i // 97, 4, 5, 6, 7, 8])
                opened_s = time.perf_counter() - started
                t0 = time.perf_counter()
                listed = client.list_sessions(operator=True)
                first_ms = (time.perf_counter() - t0) * 1000
                assert len(listed) == args.sessions, len(listed)
                times = []
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    client.list_sessions(operator=True)
                    times.append((time.perf_counter() - t0) * 1000)
                times.sort()
                tiers = {t: sum(1 for s in listed if s.residency == t) for t in ("live", "ram")}
        finally:
            proc.terminate()
            proc.wait(30)
    save_result(
        "sessions_list",
        {
            "sessions": args.sessions,
            "calls": args.calls,
            "sessions_live": tiers["live"],
            "sessions_parked_ram": tiers["ram"],
            "open_all_s": opened_s,
            "first_call_ms": first_ms,
            "p50_ms": statistics.median(times),
            "p95_ms": times[int(len(times) * 0.95) - 1],
            "max_ms": times[-1],
        },
    )


if __name__ == "__main__":
    main()
