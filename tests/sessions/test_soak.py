"""Soak: many clients, many turns, bounded in time: no untyped error, no leaked session, flat RSS.

Sized for CI; `MODELD_SOAK_CLIENTS=50 MODELD_SOAK_TURNS=20 pytest tests/sessions/test_soak.py -s`
runs the full size.

RSS is flat only once the parking tiers have filled: until every client's session has been parked
and restored, each new restore allocates a context and state buffers the allocator keeps. So the
warm-up lasts until the daemon's own counters say that has happened, plus one more round; growth
is measured over the rounds after it, when a leak (something kept per turn, per park or per
restore) still grows linearly while a filling allocator has settled.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from daemons import Served, stop_served
from served_models import GEMMA as MODEL
from served_models import start_gemma

import modeldconn

CLIENTS = int(os.environ.get("MODELD_SOAK_CLIENTS", "8"))
TURNS = int(os.environ.get("MODELD_SOAK_TURNS", "8"))
#: rounds measured after the warm-up, at least; fewer could not tell a trend from noise
MEASURED_TURNS = 3
#: growth allowed over the measured rounds
RSS_GROWTH_LIMIT = 0.03
LIMIT_S = 600


@dataclass(frozen=True)
class Sample:
    """Taken when every client has finished a round."""

    rss: int
    parks: int
    restores: int


def steady_from(samples: list[Sample], clients: int) -> int:
    """The index of the first measured round: one round after the one by which the daemon had
    restored as many sessions as there are clients. With no more clients than live contexts
    nothing parks, and two rounds of warm-up suffice."""
    for i, sample in enumerate(samples):
        if sample.restores >= clients:
            return i + 2
    if samples and samples[-1].parks == 0:
        return 2
    return len(samples)


def test_soak(gemma_file: Path) -> None:
    daemon: Served = start_gemma(gemma_file, "--max-live-sessions", "4")
    process = psutil.Process(daemon.proc.pid)
    ttfts: list[float] = []
    failures: list[BaseException] = []
    samples: list[Sample] = []
    lock = threading.Lock()

    def sample() -> None:
        status = daemon.client.status()
        samples.append(Sample(process.memory_info().rss, status.parks, status.restores))

    turn_done = threading.Barrier(CLIENTS, action=sample)
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
        steady = steady_from(samples, CLIENTS)
        series = [round(x.rss / 2**20) for x in samples]
        assert len(samples) - steady >= MEASURED_TURNS, (
            f"{TURNS} turns leave fewer than {MEASURED_TURNS} after the warm-up (RSS MiB by "
            f"round: {series}); raise MODELD_SOAK_TURNS"
        )
        after_warm_up, last = samples[steady - 1].rss, samples[-1].rss
        growth = (last - after_warm_up) / after_warm_up
        ttfts.sort()
        print(
            f"soak: {CLIENTS} clients x {TURNS} turns, TTFT p50 "
            f"{statistics.median(ttfts):.0f} ms, p99 {ttfts[int(len(ttfts) * 0.99)]:.0f} ms, "
            f"RSS {after_warm_up / 2**20:.0f} -> {last / 2**20:.0f} MiB ({growth:+.1%}) over "
            f"rounds {steady + 1}-{len(samples)} after a warm-up of {steady} "
            f"({samples[steady - 1].restores} restores); by round: {series} MiB"
        )
        assert growth < RSS_GROWTH_LIMIT, series
    finally:
        stop_served(daemon)
