"""A bystander's time to first token while another client hogs the daemon (issue 13, fault 5).

    .venv/bin/python bench/fairness_bench.py [--baseline-src /tmp/modeld-before] [--samples 16]
        [--hogs 200] [--prefill 30000] [--threads N]

One daemon per source tree (this one, and ``--baseline-src`` if given: see before_after.py),
llama backend, gemma3-270m. A *bystander* client runs short turns: EnsurePrefix of a ~40-token
prompt (new each turn), then the first token of a Decode; its TTFT is the whole turn, call to
first token, as its user sees it. Three phases:

quiet    nothing else runs
decodes  a *greedy* client (another connection, another client id) runs ``--hogs`` sessions
         decoding at once, round after round of 16 tokens
prefill  the greedy client prefills one ``--prefill``-token prompt (n_ctx 32768)

Reported per phase: p50 and p99 (the max at these sample counts) of the bystander's TTFT, and
one prefill chunk's time (512 tokens at the prefill's average speed). The target: busy p99 <=
2 x quiet p99 + one chunk. Writes bench/results/fairness.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from before_after import REPO, TreeDaemon, pctl, tree_daemons, tree_revision
from harness import MODEL, TEXT, save_result

import modeldconn

CHUNK = 128  #: tokens a prefill computes between other sessions' turns (PREFIX_CHUNK)


def bystander_turns(
    client: modeldconn.Client, samples: int, until: Callable[[], bool]
) -> list[float]:
    """TTFT in ms of ``samples`` turns (fewer if ``until()`` turns true first: its phase ended)."""
    out: list[float] = []
    with client.open_session(MODEL, n_ctx=1024) as session:
        for i in range(samples):
            if out and until():
                break
            prompt = f"Note {i}: " + TEXT[: 120 + i % 7]
            started = time.perf_counter()
            session.ensure_prefix(prompt)
            for chunk in session.decode(max_tokens=1, ignore_eos=True):
                if chunk.token_ids and len(out) < i + 1:
                    out.append((time.perf_counter() - started) * 1000)  # first token
            # read to the end (the final chunk follows at once): no cancel, no unwinding
    return out


class Greedy:
    """The other client, on a thread with its own event loop and AsyncClient."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.done = threading.Event()
        self.prefill_ms = 0.0
        self.prefilled = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def run(self, work: Callable[[modeldconn.AsyncClient], Any]) -> None:
        def body() -> None:
            async def main() -> None:
                async with modeldconn.AsyncClient(data_root=self.root) as client:
                    await work(client)

            try:
                asyncio.run(main())
            except BaseException as exc:
                self.error = exc
                self.ready.set()
            finally:
                self.done.set()

        self._thread = threading.Thread(target=body, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        assert self._thread is not None
        self._thread.join(600)
        if self.error is not None:
            raise self.error

    async def decodes(self, client: modeldconn.AsyncClient, hogs: int) -> None:
        sessions = []
        for i in range(hogs):
            session = await client.open_session(MODEL, n_ctx=512)
            await session.ensure_prefix(f"Story {i}: " + TEXT[:100])
            sessions.append(session)
        self.ready.set()

        async def loop(session: modeldconn.AsyncSession) -> None:
            while not self.stop.is_set():
                async for _ in session.decode(max_tokens=16, ignore_eos=True):
                    pass
                await session.ensure_prefix(f"Story: {id(session)} " + TEXT[:100])

        await asyncio.gather(*(loop(s) for s in sessions))
        for session in sessions:
            await session.close()

    async def prefill(self, client: modeldconn.AsyncClient, tokens: int) -> None:
        session = await client.open_session(MODEL, n_ctx=32768)
        ids = await client.tokenize(MODEL, TEXT * (tokens // 30 + 2), add_special=True)
        self.ready.set()
        started = time.perf_counter()
        reply = await session.ensure_prefix(ids[:tokens])
        self.prefill_ms = (time.perf_counter() - started) * 1000
        self.prefilled = reply.prefilled
        await session.close()


def measure(daemon: TreeDaemon, samples: int, hogs: int, prefill: int) -> dict[str, Any]:
    client = daemon.client
    bystander_turns(client, 2, lambda: False)  # warm-up
    result: dict[str, Any] = {"quiet": bystander_turns(client, samples, lambda: False)}
    greedy = Greedy(daemon.root)
    greedy.run(lambda c: greedy.decodes(c, hogs))
    greedy.ready.wait(900)
    result["decodes"] = bystander_turns(client, samples, lambda: False)
    greedy.join()
    greedy = Greedy(daemon.root)
    greedy.run(lambda c: greedy.prefill(c, prefill))
    greedy.ready.wait(300)
    time.sleep(1.0)  # the prefill is under way
    result["prefill"] = bystander_turns(client, samples, greedy.done.is_set)
    greedy.join()
    result["chunk_ms"] = greedy.prefill_ms / max(1, greedy.prefilled) * CHUNK
    return result


def summary(label: str, measured: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    quiet_p99 = pctl(measured["quiet"], 0.99)
    for phase in ("quiet", "decodes", "prefill"):
        xs = measured[phase]
        out[f"{label} {phase} TTFT p50 ms"] = round(pctl(xs, 0.5), 1)
        out[f"{label} {phase} TTFT p99 ms"] = round(pctl(xs, 0.99), 1)
        out[f"{label} {phase} samples"] = len(xs)
    out[f"{label} prefill chunk ms"] = round(measured["chunk_ms"], 1)
    bound = 2 * quiet_p99 + measured["chunk_ms"]
    out[f"{label} target ms (2 x quiet p99 + chunk)"] = round(bound, 1)
    for phase in ("decodes", "prefill"):
        out[f"{label} {phase} within target"] = pctl(measured[phase], 0.99) <= bound
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", type=Path)
    parser.add_argument("--current-src", type=Path, default=REPO)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--hogs", type=int, default=200)
    parser.add_argument("--prefill", type=int, default=30000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="fairness")
    args = parser.parse_args()
    trees = [("after", args.current_src)]
    if args.baseline_src:
        trees.append(("before", args.baseline_src))
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}",
        "hogs": args.hogs,
        "prefill_tokens": args.prefill,
    }
    for label, tree in trees:  # one at a time: each is measured on a machine it has alone
        result[f"{label} tree"] = f"{tree} @ {tree_revision(tree)}"
        with tree_daemons([(label, tree)], "--threads", str(args.threads)) as (daemon,):
            result.update(summary(label, measure(daemon, args.samples, args.hogs, args.prefill)))
    save_result(args.name, result, width=48)


if __name__ == "__main__":
    main()
