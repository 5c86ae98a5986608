"""Where a bystander's turn goes while another client prefills a long prompt: the time of each
step (OpenSession, EnsurePrefix, the first token of a Decode, CloseSession).

    .venv/bin/python bench/bystander_steps.py [--prefill-repeats 220] [--turns 6] [--threads 2]

One daemon (llama, gemma3-270m) on a scratch data root; a *hog* client (its own connection and
client id) EnsurePrefixes ~--prefill-repeats x 36 tokens (n_ctx 16384) in a thread; three
seconds in, the bystander (another client) runs --turns short turns, each on a new session
(n_ctx 2048), and prints each step's milliseconds. A probe, not a benchmark: it says which step
to work on (bench/fairness_bench.py measures the turn as a whole).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import MODEL, TEXT, start_daemon, stop_daemon

import modeldconn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill-repeats", type=int, default=220)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "models").mkdir()
        proc = start_daemon(root, "--threads", str(args.threads))
        try:
            hog = modeldconn.Client(data_root=root)
            bystander = modeldconn.Client(data_root=root)
            hog_session = hog.open_session(MODEL, n_ctx=16384)
            done = threading.Event()

            def prefill() -> None:
                started = time.perf_counter()
                hog_session.ensure_prefix(TEXT * args.prefill_repeats)
                print(f"hog prefill {time.perf_counter() - started:.1f} s")
                done.set()

            threading.Thread(target=prefill).start()
            time.sleep(3)
            for k in range(args.turns):
                if done.is_set():
                    break
                t0 = time.perf_counter()
                session = bystander.open_session(MODEL, n_ctx=2048)
                t1 = time.perf_counter()
                session.ensure_prefix(f"Question {k}: what is the capital of France? " * 3)
                t2 = time.perf_counter()
                next(iter(session.decode(max_tokens=1)))
                t3 = time.perf_counter()
                session.close()
                t4 = time.perf_counter()
                print(
                    f"open {1000 * (t1 - t0):.0f} ms, ensure_prefix {1000 * (t2 - t1):.0f} ms, "
                    f"first token {1000 * (t3 - t2):.0f} ms, close {1000 * (t4 - t3):.0f} ms"
                )
                time.sleep(0.3)
            done.wait()
            hog.close()
            bystander.close()
        finally:
            stop_daemon(proc)


if __name__ == "__main__":
    main()
