"""Soak: many clients, many turns, bounded in time: no untyped error, no leaked session, flat RSS.

Sized for CI; `MODELD_SOAK_CLIENTS=50 MODELD_SOAK_TURNS=20 pytest tests/sessions/test_soak.py -s`
runs the full size.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import psutil
from daemons import Served, stop_served
from served_models import GEMMA as MODEL
from served_models import start_gemma

import modeldconn

CLIENTS = int(os.environ.get("MODELD_SOAK_CLIENTS", "8"))
TURNS = int(os.environ.get("MODELD_SOAK_TURNS", "6"))
WARM_UP_TURNS = 2
LIMIT_S = 600


def test_soak(gemma_file: Path) -> None:
    daemon: Served = start_gemma(gemma_file, "--max-live-sessions", "4")
    process = psutil.Process(daemon.proc.pid)
    ttfts: list[float] = []
    failures: list[BaseException] = []
    rss: dict[int, list[int]] = {}
    lock = threading.Lock()
    turn_done = threading.Barrier(
        CLIENTS, action=lambda: rss.setdefault(len(rss), []).append(process.memory_info().rss)
    )
    deadline = time.monotonic() + LIMIT_S

    def client_loop(i: int) -> None:
        try:
            with modeldconn.Client(data_root=daemon.root) as client:
                session = client.open_session(MODEL, n_ctx=512)
                prefix = f"Client {i} keeps a ship's log. " * 4
                for turn in range(TURNS):
                    if time.monotonic() > deadline:
                        break
                    session.ensure_prefix(prefix)
                    out = session.generate(suffix=f" Day {turn}:", max_tokens=8, ignore_eos=True)
                    with lock:
                        ttfts.append(out.final.ttft_ms)
                    turn_done.wait(LIMIT_S)
        except threading.BrokenBarrierError:
            pass  # another client failed; its failure is the one reported
        except BaseException as exc:  # any error at all fails the soak
            with lock:
                failures.append(exc)
            turn_done.abort()

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LIMIT_S)
        assert not failures, failures[:3]
        status = daemon.client.status()
        assert status.sessions_open == 0 and status.clients_attached == 0  # nothing leaked
        after_warm_up, last = rss[WARM_UP_TURNS - 1][0], rss[len(rss) - 1][0]
        growth = (last - after_warm_up) / after_warm_up
        ttfts.sort()
        print(
            f"soak: {CLIENTS} clients x {TURNS} turns, TTFT p50 "
            f"{statistics.median(ttfts):.0f} ms, p99 {ttfts[int(len(ttfts) * 0.99)]:.0f} ms, "
            f"RSS {after_warm_up / 2**20:.0f} -> {last / 2**20:.0f} MiB ({growth:+.1%})"
        )
        assert growth < 0.05
    finally:
        stop_served(daemon)
