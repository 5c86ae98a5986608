"""EnsurePrefix latency against the number of idle sessions: finding a donor prefix must not cost
O(sessions x tape).

    .venv/bin/python bench/prefix_index_bench.py [--sizes 0,50,200] [--reps 200]
        [--tape 4000] [--diverge 2000] [--tail 8] [--max-live 256] [--threads 1]
        [--baseline-src /tmp/modeld-before] [--current-src PATH]

One daemon (llama backend, the tiny qwen2 fixture, so 200 x 4k-token tapes fit in a few hundred
MB; its GGUF's trained context is raised from 2,048 to 8,192 in a scratch copy, which only changes
the metadata llama.cpp sizes contexts by) holds:

- a *probe* session whose tape is a --tape-token head;
- N *idle* sessions whose tapes are the probe's first --diverge tokens plus --tape - --diverge
  tokens of their own: each shares half the probe's tape, so a linear donor search compares ~2,000
  tokens per session and finds nothing worth copying (the probe's own KV is longer): the worst
  case for it, and no KV copy muddies the timing.

Each measured call is the probe's ``ensure_prefix(head + a new --tail-token tail)``: it reuses its
own resident head, drops the last tail, prefills --tail tokens, and searches for a donor. N grows
incrementally through --sizes (0, 50, 200) in one daemon; at each N, --reps calls (after a
warm-up) give the median and p90. With --baseline-src, a second daemon from that source tree
(PYTHONPATH=PATH/src) holds the same sessions, and every rep measures both, interleaved (the order
alternates), so before/after stand side by side.

The cost under test is Python on the engine thread, so the engine computes with one thread by
default (--threads 1): the 8-token prefill stays small and steady, and the client keeps a core.

By default --max-live 256 keeps every session live (resident in an engine context; none is
parked); --max-live 8 parks the idle ones instead (the donor search reads parked tapes too). The
table reports how many were live and parked at each N.

Writes bench/results/NAME.json (--name, default prefix_index) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from before_after import REPO, TreeDaemon, interleaved, med, pctl, tree_daemons, tree_revision
from harness import save_result

import modeldconn

TINY_FILE = REPO / "tests" / "fixtures" / "tiny-qwen2.gguf"
TINY = "tiny"
CORPUS = (
    "The daemon keeps one model hot for every client on the machine. A session holds a prompt "
    "prefix resident, appends only what changed, and streams tokens back as they are decoded. "
    "Once upon a time a small model lived on a laptop. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100."
)


def tiny_with_context(directory: Path, context: int) -> Path:
    """A copy of the tiny fixture whose ``qwen2.context_length`` says ``context`` (the fixture's
    2,048 cannot hold a 4k-token tape); weights and vocabulary are untouched."""
    data = bytearray(TINY_FILE.read_bytes())
    key = b"qwen2.context_length"
    at = data.find(key) + len(key)
    kind, _old = struct.unpack_from("<II", data, at)
    assert at > len(key) and kind == 4, "the fixture's context length is not a uint32"
    struct.pack_into("<I", data, at + 4, context)
    out = directory / f"{TINY}.gguf"
    out.write_bytes(bytes(data))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,50,200", help="idle sessions, ascending")
    parser.add_argument("--reps", type=int, default=200, help="measured calls per size and tree")
    parser.add_argument("--tape", type=int, default=4000, help="tokens every session holds")
    parser.add_argument("--diverge", type=int, default=2000, help="where idle tapes diverge")
    parser.add_argument("--tail", type=int, default=8, help="new tokens per probe call")
    parser.add_argument("--max-live", type=int, default=256, help="daemon --max-live-sessions")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="engine threads (1: steady, leaves the client a core)",
    )
    parser.add_argument(
        "--lease-ttl",
        default="120",
        help="both daemons' (long: a tree that does not renew its "
        "lease while loading fences itself when the load takes over 3/4 of it)",
    )
    parser.add_argument("--baseline-src", type=Path, help="a second tree, measured alongside")
    parser.add_argument("--current-src", type=Path, default=REPO)
    parser.add_argument("--name", default="prefix_index", help="bench/results/NAME.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    assert sizes == sorted(sizes), "--sizes must ascend (sessions are only added)"
    assert 0 < args.diverge < args.tape
    n_ctx = max(4096, args.tape + 4 * args.tail)
    scratch = Path(tempfile.mkdtemp(prefix="mdpib-"))
    model = tiny_with_context(scratch, max(8192, n_ctx))
    trees = [("after", args.current_src.resolve())]
    if args.baseline_src:
        trees.append(("before", args.baseline_src.resolve()))
    daemon_args = ["--threads", str(args.threads), "--lease-ttl", args.lease_ttl]
    daemon_args += ["--max-live-sessions", str(args.max_live)]
    result: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": "tiny qwen2 fixture (context 8192)",
        "tape_tokens": args.tape,
        "diverge_at": args.diverge,
        "tail_tokens": args.tail,
        "reps": args.reps,
        "max_live_sessions": args.max_live,
    }
    try:
        with tree_daemons(
            trees, *daemon_args, model=TINY, models={f"{TINY}.gguf": model}
        ) as daemons:
            for d in daemons:
                result[f"{d.label}_tree"] = f"{d.tree} @ {tree_revision(d.tree)}"
            measure(daemons, sizes, args, n_ctx, result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["command"] = "python bench/prefix_index_bench.py " + " ".join(sys.argv[1:])
    save_result(args.name, result, width=40)


def measure(
    daemons: list[TreeDaemon],
    sizes: list[int],
    args: argparse.Namespace,
    n_ctx: int,
    result: dict[str, object],
) -> None:
    pool = sorted(set(daemons[0].client.tokenize(TINY, CORPUS)))
    rng = random.Random(20261201)
    head = rng.choices(pool, k=args.tape)
    probes = {}
    for d in daemons:
        probes[d.label] = d.client.open_session(TINY, n_ctx=n_ctx)
        probes[d.label].ensure_prefix(head)
    idle: dict[str, list[modeldconn.Session]] = {d.label: [] for d in daemons}
    held = 0
    for n in sizes:
        t0 = time.perf_counter()
        while held < n:  # the same idle tapes on every daemon
            own = rng.choices(pool, k=args.tape - args.diverge)
            while own[0] == head[args.diverge]:
                own[0] = rng.choice(pool)
            tape = head[: args.diverge] + own
            for d in daemons:
                session = d.client.open_session(TINY, n_ctx=n_ctx)
                session.ensure_prefix(tape)
                idle[d.label].append(session)
            held += 1
        fill_s = time.perf_counter() - t0
        tails = [rng.choices(pool, k=args.tail) for _ in range(args.reps + 10)]
        samples: dict[str, list[float]] = {d.label: [] for d in daemons}
        for rep, tail in enumerate(tails):
            for d in interleaved(daemons, rep):
                t0 = time.perf_counter()
                got = probes[d.label].ensure_prefix(head + tail)
                elapsed_ms = (time.perf_counter() - t0) * 1000
                # the probe reused its own head and copied nothing: only the search was extra
                assert got.reused >= args.tape and got.shared == 0, (d.label, got)
                if rep >= 10:  # warm-up
                    samples[d.label].append(elapsed_ms)
        for d in daemons:
            status = d.client.status()
            key = f"{d.label}_n{n}"
            result[f"{key}_median_ms"] = med(samples[d.label])
            result[f"{key}_p90_ms"] = pctl(samples[d.label], 0.9)
            result[f"{key}_live_parked"] = f"{status.sessions_live}/{status.sessions_parked}"
            result[f"{key}_fill_s"] = round(fill_s, 1)
            print(
                f"{d.label:6} N={n:<4} median {med(samples[d.label]):7.2f} ms  "
                f"p90 {pctl(samples[d.label], 0.9):7.2f} ms  "
                f"live/parked {status.sessions_live}/{status.sessions_parked}",
                flush=True,
            )
    for d in daemons:
        base = result[f"{d.label}_n{sizes[0]}_median_ms"]
        top = result[f"{d.label}_n{sizes[-1]}_median_ms"]
        assert isinstance(base, float) and isinstance(top, float)
        result[f"{d.label}_n{sizes[-1]}_minus_n{sizes[0]}_ms"] = top - base
        for session in [probes[d.label], *idle[d.label]]:
            session.close()


if __name__ == "__main__":
    main()
