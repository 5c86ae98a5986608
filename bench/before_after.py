"""Before/after: decode tok/s and warm TTFT of two modeld source trees, side by side in one run.

    .venv/bin/python bench/before_after.py --baseline-src /tmp/modeld-before [--reps 9]
        [--tokens 128] [--prefix 2048] [--suffix 32] [--threads N] [--current-src PATH]

Both daemons are ``python -m modeld serve`` with this virtualenv's Python and the same arguments
(llama backend, gemma3-270m, --threads), each on a scratch data root of its own, each with
PYTHONPATH set to its tree's ``src`` (so neither depends on which tree is installed). The
baseline tree needs no install: e.g. ``git worktree add --detach /tmp/modeld-before 28dc4f6``.
Both run at once; every rep measures one daemon then the other (the order alternates), so
drift in the machine's load hits both alike.

decode  tok/s over --tokens tokens, greedy, after a 64-token prefix: the daemon's own decode
        timing ((tokens - 1) / final.decode_ms) and the client's (first chunk to last)
warm    TTFT: --prefix tokens resident, then EnsurePrefix(prefix) + Decode(max_tokens=1,
        suffix=new --suffix tokens) in one timing, a new suffix every rep (one warm-up)

Reports medians per tree and after/before ratios (median of the per-rep ratios); also checks that
both trees give the same greedy tokens. Writes bench/results/NAME.json (--name, default
before_after) and prints a table. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import MODEL, N_CTX, TEXT, save_result

import modeldconn

REPO = Path(__file__).resolve().parent.parent


def tree_revision(tree: Path) -> str:
    """``git describe``-like: the short commit, ``+dirty`` when src/ has changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "src") else "")


@dataclass
class TreeDaemon:
    """``python -m modeld serve`` from the source tree ``tree`` (its ``src`` on PYTHONPATH)."""

    label: str
    tree: Path
    root: Path
    proc: subprocess.Popen[bytes]
    client: modeldconn.Client
    log: Path
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def status(self, field_name: str) -> int:
        return int(getattr(self.client.status(), field_name))


def start_tree_daemon(
    label: str,
    tree: Path,
    *args: str,
    model: str = MODEL,
    backend: str = "llama",
    models: dict[str, Path] | None = None,
) -> TreeDaemon:
    """Serve ``model`` from ``tree`` on a new scratch data root (``models``: file name -> file,
    linked into its models directory); returns once it serves."""
    src = tree / "src"
    if not (src / "modeld" / "__main__.py").is_file():
        raise SystemExit(f"{tree} is not a modeld source tree (no src/modeld/__main__.py)")
    root = Path(tempfile.mkdtemp(prefix="mdba-"))
    (root / "models").mkdir()
    for name, file in (models or {}).items():
        (root / "models" / name).symlink_to(file.resolve())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    log = root.parent / f"{root.name}.log"
    command = [sys.executable, "-m", "modeld", "serve", "--data-root", str(root)]
    command += ["--backend", backend, "--model", model, *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not modeldconn.available(data_root=root):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"the {label} daemon ({tree}) did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return TreeDaemon(label, tree, root, proc, modeldconn.Client(data_root=root), log)


def stop_tree_daemon(daemon: TreeDaemon) -> None:
    daemon.client.close()
    if daemon.proc.poll() is None:
        daemon.proc.terminate()
        try:
            daemon.proc.wait(30)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(10)
    shutil.rmtree(daemon.root, ignore_errors=True)
    daemon.log.unlink(missing_ok=True)


@contextmanager
def tree_daemons(
    trees: list[tuple[str, Path]],
    *args: str,
    model: str = MODEL,
    backend: str = "llama",
    models: dict[str, Path] | None = None,
) -> Iterator[list[TreeDaemon]]:
    """One daemon per (label, tree), all serving at once; stopped (and cleaned up) on exit."""
    started: list[TreeDaemon] = []
    try:
        for label, tree in trees:
            started.append(
                start_tree_daemon(label, tree, *args, model=model, backend=backend, models=models)
            )
        yield started
    finally:
        for daemon in started:
            stop_tree_daemon(daemon)


def interleaved(daemons: list[TreeDaemon], rep: int) -> list[TreeDaemon]:
    """This rep's order: alternating, so neither tree always runs first."""
    return daemons if rep % 2 == 0 else daemons[::-1]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def pctl(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def prompt_tokens(client: modeldconn.Client, n: int, salt: str = "") -> list[int]:
    ids = client.tokenize(MODEL, salt + TEXT * (n // 30 + 2), add_special=True)
    assert len(ids) >= n
    return ids[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True, help="the 'before' tree")
    parser.add_argument("--current-src", type=Path, default=REPO, help="the 'after' tree")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prefix", type=int, default=2048)
    parser.add_argument("--suffix", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--lease-ttl",
        default="120",
        help="both daemons' (long: a tree that does not renew its "
        "lease while loading fences itself when the load takes over 3/4 of it)",
    )
    parser.add_argument("--name", default="before_after", help="bench/results/NAME.json")
    args = parser.parse_args()
    trees = [("after", args.current_src.resolve()), ("before", args.baseline_src.resolve())]
    daemon_args = ("--threads", str(args.threads), "--lease-ttl", args.lease_ttl)
    with tree_daemons(trees, *daemon_args) as daemons:
        tokenizer = daemons[0].client
        prompt = prompt_tokens(tokenizer, 64)
        prefix = prompt_tokens(tokenizer, args.prefix)
        suffixes = [
            tokenizer.tokenize(MODEL, f" Question {i}: " + TEXT)[: args.suffix]
            for i in range(args.reps + 1)
        ]
        # one session holds the resident prefix (warm TTFT), another decodes: a decode turn must
        # not replace the prefix the warm measurement relies on
        sessions = {d.label: d.client.open_session(MODEL, n_ctx=N_CTX) for d in daemons}
        decoders = {d.label: d.client.open_session(MODEL, n_ctx=N_CTX) for d in daemons}
        greedy: dict[str, list[int]] = {}
        for d in daemons:  # warm both: weights paged in, the prefix resident
            sessions[d.label].ensure_prefix(prefix)
            next(iter(sessions[d.label].decode(max_tokens=1, suffix=suffixes[0])))
        for rep in range(args.reps):
            for d in interleaved(daemons, rep):
                session = decoders[d.label]
                session.ensure_prefix(prompt)
                t_first = t_last = 0.0
                ids: list[int] = []
                final = None
                for chunk in session.decode(max_tokens=args.tokens, ignore_eos=True):
                    now = time.perf_counter()
                    if chunk.token_ids:
                        if not ids:
                            t_first = now
                        t_last = now
                        ids.extend(chunk.token_ids)
                    final = chunk.final or final
                assert final is not None and len(ids) == args.tokens, (d.label, len(ids))
                d.add("decode_tok_s", (args.tokens - 1) / (final.decode_ms / 1000))
                d.add("decode_client_tok_s", (args.tokens - 1) / max(t_last - t_first, 1e-9))
                greedy.setdefault(d.label, ids)
            for d in interleaved(daemons, rep + 1):
                session = sessions[d.label]
                t0 = time.perf_counter()
                session.ensure_prefix(prefix)  # reuses the prefix, drops the last turn's tokens
                first = next(iter(session.decode(max_tokens=1, suffix=suffixes[rep + 1])))
                d.add("warm_ttft_ms", (time.perf_counter() - t0) * 1000)
                assert first.token_ids
        for session in sessions.values():
            session.close()
    after, before = daemons
    result: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": MODEL,
        "threads": args.threads,
        "reps": args.reps,
        "after_tree": f"{after.tree} @ {tree_revision(after.tree)}",
        "before_tree": f"{before.tree} @ {tree_revision(before.tree)}",
        "decode_tokens": args.tokens,
        "prefix_tokens": args.prefix,
        "suffix_tokens": args.suffix,
    }
    for key in ("decode_tok_s", "decode_client_tok_s", "warm_ttft_ms"):
        a, b = after.samples[key], before.samples[key]
        result[f"after_{key}"] = med(a)
        result[f"before_{key}"] = med(b)
        result[f"after_over_before_{key}"] = med([x / y for x, y in zip(a, b, strict=True)])
        result[f"after_{key}_p90"] = pctl(a, 0.9)
        result[f"before_{key}_p90"] = pctl(b, 0.9)
    result["greedy_tokens_identical"] = greedy["after"] == greedy["before"]
    result["command"] = "python bench/before_after.py " + " ".join(sys.argv[1:])
    save_result(args.name, result, width=40)


if __name__ == "__main__":
    main()
