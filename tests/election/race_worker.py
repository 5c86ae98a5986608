"""One contender in the acquisition race: a separate process, driven round by round."""

from __future__ import annotations

import os
import time
import uuid
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

from modeld.lease._store import Acquired, LeaseStore
from modeldconn._lease import LeaseRecord, process_start_time, this_host


def contend(
    rounds: list[Path], barrier: Barrier, results: Queue[tuple[int, str, bool]], judged: Event
) -> None:
    pid = os.getpid()
    start = process_start_time(pid) or 0.0
    for number, root in enumerate(rounds):
        me = str(uuid.uuid4())
        candidate = LeaseRecord(
            instance_id=me,
            pid=pid,
            pid_start_time=start,
            host=this_host(),
            endpoint="unix:///nowhere",
            backend="llama",
            protocol=1,
            version="race",
            acquired_at=time.time(),
            renewed_at=time.time(),
            ttl_s=15.0,
            state="starting",
        )
        barrier.wait()  # everyone starts the round together
        store = LeaseStore(root, ttl_s=15.0, lock_timeout_s=30.0)
        won = isinstance(store.try_acquire(candidate), Acquired)
        results.put((number, me, won))
    # Stay alive until judged: a winner that exits is a dead holder, and a late loser would
    # rightly take its lease over.
    judged.wait(60)
