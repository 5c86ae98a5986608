"""Benchmark model loading: Gemma's load time from a cold and a warm file cache, on both
backends, and the latency of LoadModel for a model already loaded.

    .venv/bin/python bench/loading_bench.py               # Gemma, both backends (quiet machine)
    .venv/bin/python bench/loading_bench.py --size tiny   # smoke: the tiny fixture, no cache drop

Each cycle is UnloadModel then LoadModel; the load time is the daemon's own figure
(``LoadedModelStatus.last_load_s``: the engine's load, not the RPC round trip). "Cold" drops the
page cache first (``echo 3 > /proc/sys/vm/drop_caches``, root only); where that is not permitted
the cold figure is reported as warm and says why. openvino's compiled-model cache
(``<data root>/cache``) stays warm in both: only the file cache is dropped. Prints a table and
writes bench/results/loading.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from harness import save_result, start_daemon, stop_daemon

import modeldconn

TINY_FILE = Path(__file__).parent.parent / "tests" / "fixtures" / "tiny-qwen2.gguf"


def drop_page_cache() -> str:
    """'' when the page cache was dropped, else why not."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def start_tiny(root: Path, backend: str) -> subprocess.Popen[bytes]:
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / "tiny.gguf").symlink_to(TINY_FILE)
    return start_daemon(root, backend=backend, model="tiny")


def load_once(client: modeldconn.Client, model: str, cold: bool) -> tuple[float, float, str]:
    """(engine load s, LoadModel round trip s, why the cache was not dropped) for one cycle."""
    client.unload_model(model)
    why = drop_page_cache() if cold else "not asked"
    started = time.perf_counter()
    reply = client.load_model(model)
    round_trip = time.perf_counter() - started
    assert not reply.already_loaded
    status = next(m for m in client.status().models if m.name == reply.facts.name)
    return status.last_load_s, round_trip, why


def bench_backend(backend: str, model: str, cycles: int, calls: int, drop: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="modeld-loading-"))
    proc = start_tiny(root, backend) if model == "tiny" else start_daemon(root, backend=backend)
    try:
        with modeldconn.Client(data_root=root) as client:
            cold = [load_once(client, model, cold=drop) for _ in range(cycles)]
            warm = [load_once(client, model, cold=False) for _ in range(cycles)]
            latencies = []
            for _ in range(calls):
                started = time.perf_counter()
                reply = client.load_model(model)
                latencies.append(time.perf_counter() - started)
                assert reply.already_loaded
    finally:
        stop_daemon(proc)
        shutil.rmtree(root, ignore_errors=True)
    why = cold[0][2]
    cold_s = statistics.median(c[0] for c in cold)
    warm_s = statistics.median(w[0] for w in warm)
    latencies.sort()
    return {
        f"{backend}_cold_cache": "dropped" if not why else f"NOT dropped ({why}): warm",
        f"{backend}_load_cold_s": cold_s,
        f"{backend}_load_warm_s": warm_s,
        f"{backend}_cold_over_warm": cold_s / warm_s if warm_s else 0.0,
        f"{backend}_loadmodel_rpc_cold_s": statistics.median(c[1] for c in cold),
        f"{backend}_already_loaded_p50_ms": latencies[len(latencies) // 2] * 1000,
        f"{backend}_already_loaded_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--backends", default="llama,openvino")
    parser.add_argument("--cycles", type=int, default=0, help="loads per figure (median)")
    parser.add_argument("--calls", type=int, default=0, help="LoadModel calls for the p50")
    args = parser.parse_args()
    tiny = args.size == "tiny"
    model = "tiny" if tiny else "gemma3-270m"
    cycles = args.cycles or (2 if tiny else 5)
    calls = args.calls or (50 if tiny else 500)
    result: dict[str, Any] = {"model": model, "cycles": cycles, "calls": calls}
    for backend in args.backends.split(","):
        # a smoke run must not empty the page cache under the other work on the machine
        result.update(bench_backend(backend, model, cycles, calls, drop=not tiny))
    save_result("loading" if not tiny else "loading_tiny", result, width=36)


if __name__ == "__main__":
    main()
