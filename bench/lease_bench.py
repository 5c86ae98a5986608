"""Benchmark the lease: offline probe latency, and takeover time after `kill -9` of the leader.

    .venv/bin/python bench/lease_bench.py [--probes 20000] [--takeovers 10]

Prints a table and writes bench/results/lease.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import save_result

import modeldconn


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "modeld", "serve", "--data-root", str(root), "--lease-ttl", "15"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def serving_pid(root: Path) -> int | None:
    result = modeldconn.probe(data_root=root)
    if result.serving and result.lease is not None:
        return result.lease.pid
    return None


def wait(predicate: Callable[[], object], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.001)


def bench_probes(root: Path, count: int) -> dict[str, float]:
    for _ in range(200):  # warm caches and imports
        modeldconn.available(data_root=root)
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        modeldconn.available(data_root=root)
        samples.append(time.perf_counter() - t0)
    health = []
    for _ in range(max(20, count // 200)):
        t0 = time.perf_counter()
        modeldconn.probe(data_root=root, health=True)
        health.append(time.perf_counter() - t0)
    return {
        "available_p50_us": statistics.median(samples) * 1e6,
        "available_p99_us": percentile(samples, 0.99) * 1e6,
        "probe_health_p50_ms": statistics.median(health) * 1e3,
    }


def bench_takeovers(root: Path, rounds: int) -> list[float]:
    procs = [start(root), start(root)]
    times = []
    try:
        for _ in range(rounds):
            wait(lambda: serving_pid(root), 30)
            leader = serving_pid(root)
            assert leader is not None
            wait(lambda: len([p for p in procs if p.poll() is None]) >= 2, 30)
            time.sleep(0.5)  # let the standby settle into its poll loop
            t0 = time.perf_counter()
            os.kill(leader, signal.SIGKILL)
            wait(lambda old=leader: serving_pid(root) not in (None, old), 10)
            times.append(time.perf_counter() - t0)
            dead = next(p for p in procs if p.pid == leader)
            dead.wait()
            procs.remove(dead)
            procs.append(start(root))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=20000)
    parser.add_argument("--takeovers", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mdbench-"))
    try:
        leader = start(root)
        wait(lambda: serving_pid(root), 30)
        probes = bench_probes(root, args.probes)
        leader.send_signal(signal.SIGTERM)
        leader.wait()
        takeovers = bench_takeovers(root, args.takeovers)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        **probes,
        "takeover_median_ms": statistics.median(takeovers) * 1e3,
        "takeover_max_ms": max(takeovers) * 1e3,
        "takeover_rounds": len(takeovers),
        "command": "python bench/lease_bench.py " + " ".join(sys.argv[1:]),
    }
    save_result("lease", result, width=24)


if __name__ == "__main__":
    main()
