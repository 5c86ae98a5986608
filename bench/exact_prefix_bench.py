"""What ``exact_prefix`` costs (issue 21), and how the aligned prefill chunk C was chosen.

    .venv/bin/python bench/exact_prefix_bench.py --chunks      # C: in-process llama engine
    .venv/bin/python bench/exact_prefix_bench.py --workloads   # W3, W4: exact_prefix on vs off
        [--backend llama|openvino] [--reps 3] [--threads 2]
    .venv/bin/python bench/exact_prefix_bench.py --split       # split-invariance per engine
    .venv/bin/python bench/exact_prefix_bench.py --demo        # warm vs cold, option off / on
    .venv/bin/python bench/exact_prefix_bench.py --bystander 8000  # a turn during a prefill

``--chunks`` (gemma3-270m Q4_K_M, llama.cpp in-process, ``--threads``): for C = 64, 128, 256,
512, the prefill rate of a 2,048-token prompt computed in aligned chunks of C; the warm TTFT of
a W3 turn with the guarantee (KV cut to the last boundary of a 2,000-token prefix, the partial
chunk and a 32-token suffix recomputed, aligned) against one without it (the 32 tokens alone);
and one chunk's time deep in a long prompt (at position ``DEEP``): what a bystander waits for
between two of a long prefill's chunks.

``--workloads``: one daemon, two sessions per workload, one with ``exact_prefix`` and one without,
turn by turn in the same run (so both see the same machine load):
  W3  a fixed ~2k-token prefix resident, then a new 32-token suffix and 16 greedy tokens a turn
  W4  a 10-turn chat whose history grows (each session continues its own answers), 32 tokens out
TTFT is EnsurePrefix + the first token, as the client sees it; ``recomputed`` is the tokens the
turn prefilled beyond the same turn without the guarantee. Writes
bench/results/exact_prefix_{chunks,<backend>,split,demo,bystander}.json. The machine is not
assumed quiet: the two sides are interleaved, and medians are reported.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from harness import MODEL, TEXT, save_result, start_daemon, stop_daemon

import modeldconn

CHUNKS = (64, 128, 256, 512)
DEEP = 8192  #: where the bystander's chunk is measured
W3_PREFIX, W3_SUFFIX = 2000, 32
QUESTIONS = (
    "What was the town built of?",
    "Who lived there first?",
    "Why did it grow?",
    "What did the traders sell?",
    "How old is the port?",
    "What happened to the river?",
    "Name one building.",
    "Who governs it now?",
    "What is it famous for?",
    "Summarize it in a sentence.",
)


def _gemma_gguf() -> Path:
    from served_models import gemma_gguf

    return gemma_gguf()


def chunk_figures(threads: int, reps: int) -> dict[str, Any]:
    from modeld.backends.llama._backend import LlamaBackend
    from modeld.models._facts import ModelSpec, facts_from_gguf

    path = _gemma_gguf()
    backend = LlamaBackend(n_threads=threads)
    model = backend.load(ModelSpec(facts_from_gguf(path, name=MODEL, digest="bench")))
    ids = model.tokenize(TEXT * 400, add_special=True)
    prompt, deep = ids[:2048], ids[: DEEP + 512]
    out: dict[str, Any] = {
        "threads": threads,
        "machine": platform.processor() or platform.machine(),
    }

    def aligned(session: Any, tokens: list[int], chunk: int) -> None:
        while session.kv_len < len(tokens):
            start = session.kv_len
            session.prefill(tokens[start : start - start % chunk + chunk])

    session, deep_session = model.open_session(4096), model.open_session(DEEP + 512)
    try:
        aligned(deep_session, deep[:DEEP], 512)  # the deep context, once
        for chunk in CHUNKS:
            rates: list[float] = []
            exact: list[float] = []
            plain: list[float] = []
            deep_ms: list[float] = []
            for _ in range(reps):
                session.truncate(0)
                t0 = time.perf_counter()
                aligned(session, prompt, chunk)
                rates.append(len(prompt) / (time.perf_counter() - t0))
                w3 = ids[: W3_PREFIX + W3_SUFFIX]
                for keep, bucket in ((W3_PREFIX - W3_PREFIX % chunk, exact), (W3_PREFIX, plain)):
                    session.truncate(W3_PREFIX)
                    t0 = time.perf_counter()
                    session.truncate(keep)
                    aligned(session, w3, chunk)
                    bucket.append((time.perf_counter() - t0) * 1000)
                # one chunk deep in a long prompt: what a bystander waits behind
                deep_session.truncate(DEEP)
                t0 = time.perf_counter()
                deep_session.prefill(deep[DEEP : DEEP + chunk])
                deep_ms.append((time.perf_counter() - t0) * 1000)
            out[f"C{chunk}"] = {
                "prefill_tok_s": statistics.median(rates),
                "w3_warm_prefill_ms_exact": statistics.median(exact),
                "w3_warm_prefill_ms_plain": statistics.median(plain),
                "w3_exact_cost": statistics.median(exact) / statistics.median(plain) - 1,
                f"chunk_ms_at_{DEEP}": statistics.median(deep_ms),
            }
            print(chunk, out[f"C{chunk}"], flush=True)
    finally:
        session.close()
        deep_session.close()
        model.close()
    return out


def split_figures(threads: int) -> dict[str, Any]:
    """Is an engine split-invariant? The last token's logits of one 300-token prompt computed
    in pieces cut two ways, per engine and precision: bit-identical or not, and the largest
    difference."""
    import numpy as np
    from served_models import TINY_FILE

    from modeld.backends.llama._backend import LlamaBackend
    from modeld.backends.openvino._backend import OpenVinoBackend
    from modeld.models._facts import ModelSpec, facts_from_gguf
    from modeld.models._ir_facts import facts_from_ir

    ir = Path.home() / ".cache" / "modeld" / "openvino-ir" / "gemma3-270m-int8-v2"
    engines: list[tuple[str, Any, Any]] = [
        (
            "llama gemma Q4_K_M",
            LlamaBackend(n_threads=threads),
            facts_from_gguf(_gemma_gguf(), name=MODEL, digest="b"),
        ),
        (
            "llama tiny f32",
            LlamaBackend(n_threads=threads),
            facts_from_gguf(TINY_FILE, name="tiny", digest="b"),
        ),
    ]
    cache = Path(tempfile.mkdtemp(prefix="mdov-"))
    for precision in ("f32", "bf16"):
        backend = OpenVinoBackend(n_threads=threads, cache_dir=cache, precision=precision)
        engines.append(
            (
                f"openvino gemma int8 IR {precision}",
                backend,
                facts_from_ir(ir, name=MODEL, digest="b"),
            )
        )
        engines.append(
            (
                f"openvino tiny {precision}",
                backend,
                facts_from_gguf(TINY_FILE, name="tiny", digest="b"),
            )
        )
    out: dict[str, Any] = {}
    for name, backend, facts in engines:
        model = backend.load(ModelSpec(facts))
        ids = model.tokenize(TEXT * 30, add_special=True)[:300]
        session = model.open_session(1024)

        # (a, b): the same prompt cut in two ways; the first four change the size of the call
        # that computes the last token (300 vs 236, 172, 45, 1 tokens), the last two keep it
        # (45 tokens, 1 token) and only split what comes before it
        pairs: tuple[tuple[list[int], list[int]], ...] = (
            ([], [64]),
            ([], [128]),
            ([], [255]),
            ([], [299]),
            ([255], [100, 255]),
            ([299], [150, 299]),
        )
        diffs = {
            f"{a} vs {b}": float(
                np.abs(_split_logits(session, ids, a) - _split_logits(session, ids, b)).max()
            )
            for a, b in pairs
        }
        out[name] = {"bit_identical": all(d == 0 for d in diffs.values()), "max_abs_diff": diffs}
        print(name, out[name], flush=True)
        session.close()
        model.close()
    shutil.rmtree(cache, ignore_errors=True)
    return out


def _split_logits(session: Any, ids: list[int], cuts: list[int]) -> Any:
    """The last token's logits of ``ids`` computed in one call per piece between ``cuts``."""
    import numpy as np

    session.truncate(0)
    for a, b in zip([0, *cuts], [*cuts, len(ids)], strict=True):
        session.prefill(ids[a:b])
    return np.array(_logits(session), np.float32)


def _logits(session: Any) -> Any:
    """The session's current logits, either engine."""
    import numpy as np

    if hasattr(session, "current_logits"):  # openvino
        return session.current_logits()
    row = session.logits_row()
    vocab = session.model.facts.vocab_size
    if row is None:
        return session.saved_logits
    return np.ctypeslib.as_array(session.lane.row_pointer(row), shape=(vocab,)).copy()


def demo_figures(threads: int) -> dict[str, Any]:
    """The issue's case: a ~677-token document resident, then a question; 24 greedy tokens warm
    (the document reused) and cold (one EnsurePrefix of the whole prompt), with the option off
    and on."""
    root = Path(tempfile.mkdtemp(prefix="mdexact-"))
    (root / "models").mkdir()
    (root / "models" / f"{MODEL}.gguf").symlink_to(_gemma_gguf())
    proc = start_daemon(root, "--threads", str(threads))
    client = modeldconn.Client(data_root=root)
    out: dict[str, Any] = {}
    try:
        import exact_prefix_checks

        agree = {"off": 0, "on": 0}
        cases = 0
        for length in (677, 301):
            doc = exact_prefix_checks.document(client, MODEL, length)
            for q in range(4):
                text = f"\nQuestion {q}: which river did entry {q * 11} name, and why?\nAnswer:"
                question = client.tokenize(MODEL, text)
                cases += 1
                for side, exact in (("off", False), ("on", True)):
                    with client.open_session(MODEL, exact_prefix=exact) as cold:
                        cold.ensure_prefix(doc + question)
                        want = cold.generate(max_tokens=24, ignore_eos=True).token_ids
                    with client.open_session(MODEL, exact_prefix=exact) as warm:
                        warm.ensure_prefix(doc)
                        got = warm.generate(suffix=question, max_tokens=24, ignore_eos=True)
                    agree[side] += got.token_ids == want
        questions = cases
        out = {f"warm_equals_cold_{k}": f"{v}/{questions}" for k, v in agree.items()}
    finally:
        client.close()
        stop_daemon(proc)
        shutil.rmtree(root, ignore_errors=True)
    return out


def bystander_figures(threads: int, prefill: int, samples: int) -> dict[str, Any]:
    """A bystander's turn (EnsurePrefix of a new ~40-token prompt, then a 1-token Decode read
    to its end) while another client prefills one ``prefill``-token prompt, against the same
    turn on an idle daemon."""
    import threading

    root = Path(tempfile.mkdtemp(prefix="mdexact-"))
    (root / "models").mkdir()
    (root / "models" / f"{MODEL}.gguf").symlink_to(_gemma_gguf())
    proc = start_daemon(root, "--threads", str(threads))
    out: dict[str, Any] = {"prefill_tokens": prefill}
    try:
        hog, client = modeldconn.Client(data_root=root), modeldconn.Client(data_root=root)
        long_prompt = hog.tokenize(MODEL, TEXT * (prefill // 30), add_special=True)[:prefill]

        def turns(until: threading.Event | None) -> list[float]:
            times: list[float] = []
            with client.open_session(MODEL, n_ctx=1024) as session:
                for i in range(samples):
                    if until is not None and until.is_set():
                        break
                    t0 = time.perf_counter()
                    session.ensure_prefix(f"Note {i}: " + TEXT[: 120 + i % 7])
                    session.generate(max_tokens=1, ignore_eos=True)
                    times.append((time.perf_counter() - t0) * 1000)
            return times

        out["quiet_ms"] = turns(None)
        done = threading.Event()
        spent: list[float] = []

        def hogging() -> None:
            with hog.open_session(MODEL, n_ctx=prefill + 64) as session:
                t0 = time.perf_counter()
                session.ensure_prefix(long_prompt)
                spent.append(time.perf_counter() - t0)
            done.set()

        thread = threading.Thread(target=hogging)
        thread.start()
        time.sleep(1.0)
        busy = turns(done)
        thread.join()
        out["busy_ms"] = busy
        out["quiet_p50_ms"] = statistics.median(out["quiet_ms"])
        out["busy_p50_ms"] = statistics.median(busy)
        out["busy_max_ms"] = max(busy)
        out["prefill_s"] = spent[0]
        out["chunk_ms_average"] = spent[0] * 1000 / prefill * 128
    finally:
        stop_daemon(proc)
        shutil.rmtree(root, ignore_errors=True)
    return out


def _turn(session: modeldconn.Session, ids: list[int], suffix: list[int] | None, n: int) -> Any:
    t0 = time.perf_counter()
    prefix = session.ensure_prefix(ids)
    first = 0.0
    tokens: list[int] = []
    final = None
    for chunk in session.decode(suffix=suffix, max_tokens=n, ignore_eos=True):
        if chunk.token_ids and not tokens:
            first = time.perf_counter() - t0
        tokens.extend(chunk.token_ids)
        final = chunk.final or final
    assert final is not None
    prefilled = prefix.prefilled + (final.prompt_tokens - len(ids))
    return first * 1000, prefilled, tokens


def workload_figures(backend: str, threads: int, reps: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mdexact-"))
    (root / "models").mkdir()
    if backend == "llama":
        (root / "models" / f"{MODEL}.gguf").symlink_to(_gemma_gguf())
    proc = start_daemon(root, "--threads", str(threads), backend=backend)
    client = modeldconn.Client(data_root=root)
    out: dict[str, Any] = {"backend": backend, "threads": threads, "reps": reps}
    try:
        tokenize = lambda text: client.tokenize(MODEL, text, add_special=True)  # noqa: E731
        status = client.status()
        out["prefix_chunk"] = status.prefix_chunk
        sides = {"on": True, "off": False}
        sessions = {
            k: client.open_session(MODEL, n_ctx=4096, exact_prefix=v) for k, v in sides.items()
        }
        # W3: the same prefix resident in both, a new suffix a turn
        prefix = tokenize(TEXT * 60)[:W3_PREFIX]
        ttft: dict[str, list[float]] = {k: [] for k in sides}
        extra: list[int] = []
        for side in sides:
            _turn(sessions[side], prefix, None, 1)  # make it resident (not timed)
        for rep in range(reps * 3):
            suffix = tokenize(f"\nQuestion {rep}: what did the archive say about {1700 + rep}?")[1:]
            suffix = (suffix * 8)[:W3_SUFFIX]
            done = {}
            for side in sides if rep % 2 == 0 else reversed(list(sides)):
                done[side] = _turn(sessions[side], prefix, suffix, 16)
                ttft[side].append(done[side][0])
            extra.append(done["on"][1] - done["off"][1])
        out["W3"] = _summary(ttft, extra)
        # W4: a 10-turn chat, each side continuing its own answers
        conversation: dict[str, list[float]] = {k: [] for k in sides}
        ttft = {k: [] for k in sides}
        extra = []
        for rep in range(reps):
            for side, exact in sides.items():  # a new conversation: new sessions
                sessions[side].close()
                sessions[side] = client.open_session(MODEL, n_ctx=4096, exact_prefix=exact)
            history = {k: tokenize(f"Chat {rep}.\n" + TEXT * 10) for k in sides}
            totals = dict.fromkeys(sides, 0.0)
            for question in QUESTIONS:
                done = {}
                for side in sides:
                    history[side] += tokenize(f"\nUser: {question}\nAssistant:")[1:]
                    t0 = time.perf_counter()
                    done[side] = _turn(sessions[side], history[side], None, 32)
                    totals[side] += time.perf_counter() - t0
                    history[side] += done[side][2]
                    ttft[side].append(done[side][0])
                extra.append(done["on"][1] - done["off"][1])
            for side in sides:
                conversation[side].append(totals[side])
        out["W4"] = _summary(ttft, extra)
        out["W4"]["conversation_s"] = {k: statistics.median(v) for k, v in conversation.items()}
    finally:
        client.close()
        stop_daemon(proc)
        shutil.rmtree(root, ignore_errors=True)
    return out


def _summary(ttft: dict[str, list[float]], extra: list[int]) -> dict[str, Any]:
    on, off = statistics.median(ttft["on"]), statistics.median(ttft["off"])
    return {
        "ttft_ms_p50_on": on,
        "ttft_ms_p50_off": off,
        "ttft_cost": on / off - 1,
        "recomputed_tokens_per_turn_p50": statistics.median(extra),
        "turns": len(extra),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", action="store_true")
    parser.add_argument("--workloads", action="store_true")
    parser.add_argument("--split", action="store_true")
    parser.add_argument("--demo", action="store_true")
    parser.add_argument("--bystander", type=int, default=0, metavar="TOKENS")
    parser.add_argument("--backend", default="llama", choices=("llama", "openvino"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.chunks:
        save_result("exact_prefix_chunks", chunk_figures(args.threads, args.reps), width=24)
    if args.split:
        save_result("exact_prefix_split", split_figures(args.threads), width=36)
    if args.demo:
        save_result("exact_prefix_demo", demo_figures(args.threads), width=24)
    if args.bystander:
        figures = bystander_figures(args.threads, args.bystander, 8)
        save_result("exact_prefix_bystander", figures, width=24)
    if args.workloads:
        figures = workload_figures(args.backend, args.threads, args.reps)
        save_result(f"exact_prefix_{args.backend}", figures, width=24)


if __name__ == "__main__":
    main()
