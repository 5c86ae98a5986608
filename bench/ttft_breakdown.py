"""Where a turn's time to first token goes, part by part, with and without the lane pool.

    .venv/bin/python bench/ttft_breakdown.py [--reps 9] [--prefix 2048] [--suffix 32]
        [--threads 2] [--n-ctx 4096] [--systems pool,nopool] [--hog-tokens 0]
        [--baseline-src DIR] [--json FILE]

For each system (``pool``: this tree; ``nopool``: the same daemon with ``MODELD_TTFT_POOL=0``,
every empty llama.cpp context freed at once, as before the pool; ``before``: the source tree
``--baseline-src`` DIR, e.g. ``git archive`` of an older commit, its src on PYTHONPATH) one
daemon (llama, Gemma 3 270M) is started through bench/ttft_probe.py, which times the engine's
steps. Three turns:

- ``warm`` (issue 20's W3): a session holds ``--prefix`` tokens; each rep EnsurePrefixes them
  plus a new ``--suffix``-token tail, then Decodes one token;
- ``cold``: OpenSession, EnsurePrefix of a ``--suffix``-token prompt, one token; the session
  closes after the rep (outside the timed window), so the next OpenSession finds its lane;
- ``parked``: three sessions of ``--prefix`` tokens under ``--max-live-sessions 2``, taken in
  turn, so each rep's session was parked and is restored first (W6's case).

With ``--hog-tokens N``, another client (its own connection, so another tenant) prefills
N-token prompts over and over (n_ctx N + 256) while the turns run, as in
bench/bystander_steps.py; its prefill calls are told apart by their n_ctx (session calls carry
no client id: every client's are tenant "" on the engine queue) and left out of the turns'
parts, so ``queue`` is the time the turn waited for the hog's work.

Each rep's window runs from the client's first call to the first token in its hand; the
probe's intervals inside it are summed per part (exclusive time, see ttft_probe.py), and
``transport+`` is the rest: gRPC, request and reply conversion, the session layer's Python
around the engine calls, and the loop's hand-offs. Printed: p50 ms per part over the reps.
Run it on a quiet machine: figures taken while anything else runs are off by up to 10x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from harness import MODEL, TEXT, stop_daemon

import modeldconn

PARTS = ("transport+", "queue", "lcp", "context", "restore", "prefill", "step", "sample")
BENCH = Path(__file__).parent


def _start(
    root: Path, probe: Path, pool: bool, threads: int, live: int, src: Path | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MODELD_TTFT_PROBE=str(probe), MODELD_TTFT_POOL="1" if pool else "0")
    if src is not None:
        env["PYTHONPATH"] = str(src / "src")
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "ttft_probe.py"), "serve", "--data-root", str(root),
         "--backend", "llama", "--model", MODEL, "--threads", str(threads),
         "--max-live-sessions", str(live)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not modeldconn.available(data_root=root):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the probed daemon did not start")
        time.sleep(0.05)
    return proc


def _first_token(session: modeldconn.Session) -> float:
    """When the first token reached the client (the Decode is read to its end: the final chunk
    follows at once, and a stream left early would keep the session busy while it unwinds)."""
    first = 0.0
    for chunk in session.decode(max_tokens=1, ignore_eos=True):
        if chunk.token_ids and not first:
            first = time.monotonic()
    return first


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _waiting(queued: list[tuple[float, float]], busy: list[tuple[float, float]]) -> float:
    """Seconds some job of the turn waited in the queue while the engine ran none of the
    turn's timed steps (jobs queued side by side count once; a job queued while the turn's own
    step runs is not waiting on anyone else)."""
    total = 0.0
    for start, end in _union(queued):
        total += end - start
        for b_start, b_end in busy:
            total -= max(0.0, min(end, b_end) - max(start, b_start))
    return total


def _events(probe: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in probe.read_text().splitlines() if line.strip()]


def _breakdown(
    probe: Path, windows: list[tuple[float, float]], other_n_ctx: int
) -> list[dict[str, float]]:
    """Per window, ms per part: the probe's intervals inside it (but the prefills of sessions
    of ``other_n_ctx`` tokens: another client's), and the rest."""
    events = [e for e in _events(probe) if not other_n_ctx or e["n_ctx"] != other_n_ctx]
    rows = []
    for start, end in windows:
        row = dict.fromkeys(PARTS, 0.0)
        inside = [e for e in events if start <= e["start"] and e["end"] <= end]
        for event in inside:
            if event["part"] != "queue":
                row[event["part"]] += 1000 * event["excl"]
        busy = _union([(e["start"], e["end"]) for e in inside if e["part"] != "queue"])
        queued = [(e["start"], e["end"]) for e in inside if e["part"] == "queue"]
        row["queue"] = 1000 * _waiting(queued, busy)
        row["total"] = 1000 * (end - start)
        row["transport+"] = row["total"] - sum(row[p] for p in PARTS if p != "transport+")
        rows.append(row)
    return rows


class Hog:
    """Another client prefilling ``tokens``-token prompts, one after another, until stopped."""

    def __init__(self, root: Path, tokens: int) -> None:
        self.client = modeldconn.Client(data_root=root)
        words = self.client.tokenize(MODEL, TEXT * (tokens // 30 + 2))[:tokens]
        #: its sessions' size, which tells its prefill calls apart in the probe's records
        self.n_ctx = tokens + 256
        self.session = self.client.open_session(MODEL, n_ctx=self.n_ctx)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(words,))
        self.thread.start()
        time.sleep(2.0)

    def _run(self, words: list[int]) -> None:
        k = 0
        while not self.stopping.is_set():
            k += 1
            self.session.ensure_prefix([words[0] + k % 2, *words[1:]])  # a new first token

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.client.close()


def run_system(
    pool: bool, args: argparse.Namespace, src: Path | None = None
) -> dict[str, dict[str, float]]:
    """p50 ms per part of each turn kind on one probed daemon (of tree ``src``: None, this)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "models").mkdir()
        probe = root / "probe.jsonl"
        live = 3 if args.hog_tokens else 2  # the parked turns' sessions share 2 live slots
        proc = _start(root, probe, pool, args.threads, live, src)
        hog: Hog | None = None
        try:
            if args.hog_tokens:
                hog = Hog(root, args.hog_tokens)
            client = modeldconn.Client(data_root=root)
            words = client.tokenize(MODEL, TEXT * (args.prefix // 30 + 2))
            prefix = words[: args.prefix]

            def tail(k: int) -> list[int]:
                return client.tokenize(MODEL, f" Note {k}: " + TEXT)[: args.suffix]

            windows: dict[str, list[tuple[float, float]]] = {"warm": [], "cold": [], "parked": []}
            session = client.open_session(MODEL, n_ctx=args.n_ctx)
            session.ensure_prefix(prefix)
            for k in range(args.reps + 1):  # the first rep warms caches and is not counted
                ids = prefix + tail(k)  # tokenized before the window: not part of the turn
                t0 = time.monotonic()
                session.ensure_prefix(ids)
                first = _first_token(session)
                if k:
                    windows["warm"].append((t0, first))
            session.close()
            for k in range(args.reps + 1):
                ids = tail(1000 + k)
                t0 = time.monotonic()
                cold = client.open_session(MODEL, n_ctx=args.n_ctx)
                cold.ensure_prefix(ids)
                first = _first_token(cold)
                if k:
                    windows["cold"].append((t0, first))
                cold.close()
            sessions = [client.open_session(MODEL, n_ctx=args.n_ctx) for _ in range(3)]
            for s in sessions:
                s.ensure_prefix(prefix)
            for k in range(args.reps + 1):
                s = sessions[k % 3]
                ids = prefix + tail(2000 + k)
                t0 = time.monotonic()
                s.ensure_prefix(ids)
                first = _first_token(s)
                if k:
                    windows["parked"].append((t0, first))
            client.close()
        finally:
            if hog is not None:
                hog.stop()
            stop_daemon(proc)
        other_n_ctx = hog.n_ctx if hog is not None else 0
        result = {}
        for kind, spans in windows.items():
            rows = _breakdown(probe, spans, other_n_ctx)
            result[kind] = {
                part: statistics.median(row[part] for row in rows) for part in (*PARTS, "total")
            }
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--prefix", type=int, default=2048)
    parser.add_argument("--suffix", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--systems", default="pool,nopool")
    parser.add_argument("--hog-tokens", type=int, default=0, help="another client prefills")
    parser.add_argument("--baseline-src", type=Path, default=None, help="adds system 'before'")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for system in args.systems.split(","):
        results[system] = run_system(system == "pool", args)
    if args.baseline_src is not None:
        results["before"] = run_system(True, args, args.baseline_src)
    print(
        f"p50 ms over {args.reps} reps; prefix {args.prefix}, suffix {args.suffix}, "
        f"n_ctx {args.n_ctx}, {args.threads} threads"
        + (f", during another client's {args.hog_tokens}-token prefills" if args.hog_tokens else "")
    )
    header = f"{'turn':8} {'system':7} " + " ".join(f"{p:>10}" for p in (*PARTS, "total"))
    print(header)
    for kind in ("warm", "cold", "parked"):
        for system, figures in results.items():
            cells = " ".join(f"{figures[kind][p]:10.1f}" for p in (*PARTS, "total"))
            print(f"{kind:8} {system:7} {cells}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
