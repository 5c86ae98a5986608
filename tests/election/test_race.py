"""200 rounds of concurrent acquisition by separate processes: exactly one winner each round."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from pathlib import Path

from race_worker import contend

from modeldconn._lease import LeaseRecord, lease_path, read_lease

ROUNDS = 200
CONTENDERS = 4
#: Generous: the whole race takes about a second on 2 cores.
RACE_LIMIT_S = 90


def _dead_holder(root: Path, **changes: object) -> None:
    record = LeaseRecord(
        instance_id="previous",
        pid=os.getpid(),
        pid_start_time=0.0,
        host="elsewhere",
        endpoint="unix:///gone",
        backend="llama",
        protocol=1,
        version="old",
        acquired_at=time.time() - 100,
        renewed_at=time.time() - 100,
        ttl_s=15.0,
        state="serving",
    )
    lease_path(root).write_text(dataclasses.replace(record, **changes).to_json())  # type: ignore[arg-type]


def _prepare(root: Path, number: int) -> str:
    """Round ``number`` starts free, expired, holder-dead or corrupt-and-old, in turn."""
    root.mkdir()
    kind = ("free", "expired", "holder-dead", "corrupt")[number % 4]
    if kind == "expired":
        _dead_holder(root)
    elif kind == "holder-dead":
        _dead_holder(root, host=os.uname().nodename, pid_start_time=1.0, renewed_at=time.time())
    elif kind == "corrupt":
        lease_path(root).write_text("{not json")
        os.utime(lease_path(root), (time.time() - 100, time.time() - 100))
    return kind


def test_exactly_one_winner_per_round(tmp_path: Path) -> None:
    rounds = [tmp_path / f"round{n}" for n in range(ROUNDS)]
    kinds = [_prepare(root, n) for n, root in enumerate(rounds)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(CONTENDERS)
    results = ctx.Queue()
    judged = ctx.Event()
    workers = [
        ctx.Process(target=contend, args=(rounds, barrier, results, judged))
        for _ in range(CONTENDERS)
    ]
    for worker in workers:
        worker.start()
    outcomes: dict[int, list[tuple[str, bool]]] = {}
    try:
        for _ in range(ROUNDS * CONTENDERS):
            number, instance, won = results.get(timeout=RACE_LIMIT_S)
            outcomes.setdefault(number, []).append((instance, won))
        for number, root in enumerate(rounds):
            winners = [instance for instance, won in outcomes[number] if won]
            assert len(winners) == 1, (number, kinds[number], outcomes[number])
            record = read_lease(root).record
            assert record is not None and record.instance_id == winners[0]
    finally:
        judged.set()
        for worker in workers:
            worker.join(10)
