"""Many sessions on one model at once: each gets exactly its solo result."""

from __future__ import annotations

import threading

from daemons import Served
from served_models import GEMMA as MODEL

SESSIONS = 8
TOKENS = 16


def _prompt(i: int) -> str:
    return f"Letter number {i}. Dear friend, the harvest this year was " + "good. " * i


def test_eight_sessions_decoding_at_once_match_their_solo_runs(served: Served) -> None:
    client = served.client
    solo = []
    for i in range(SESSIONS):
        with client.open_session(MODEL) as session:
            session.ensure_prefix(_prompt(i))
            solo.append(session.generate(max_tokens=TOKENS, ignore_eos=True).token_ids)

    sessions = [client.open_session(MODEL) for _ in range(SESSIONS)]
    for i, session in enumerate(sessions):
        session.ensure_prefix(_prompt(i))
    results: dict[int, tuple[int, ...]] = {}
    interleaved: list[int] = []  # which session each streamed chunk came from, in order
    lock = threading.Lock()
    start = threading.Barrier(SESSIONS)

    def run(i: int) -> None:
        start.wait()
        ids: list[int] = []
        for chunk in sessions[i].decode(max_tokens=TOKENS, ignore_eos=True):
            ids.extend(chunk.token_ids)
            with lock:
                interleaved.append(i)
        results[i] = tuple(ids)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for session in sessions:
        session.close()
    assert [results[i] for i in range(SESSIONS)] == solo
    # fair turns: nobody streamed its whole answer while the others waited
    first_done = min(len(interleaved) - interleaved[::-1].index(i) for i in range(SESSIONS))
    assert first_done > SESSIONS * TOKENS / 2


def test_a_long_prefill_does_not_freeze_other_sessions_streaming(served: Served) -> None:
    import time

    client = served.client
    with client.open_session(MODEL) as streaming, client.open_session(MODEL) as prefilling:
        streaming.ensure_prefix(_prompt(1))
        arrivals: list[float] = []
        started = threading.Event()

        def stream() -> None:
            for _chunk in streaming.decode(max_tokens=60, ignore_eos=True):
                arrivals.append(time.monotonic())
                started.set()

        thread = threading.Thread(target=stream)
        thread.start()
        started.wait(30)
        long_prompt = "The archive holds letters, maps and ledgers from three centuries. " * 110
        t0 = time.monotonic()
        result = prefilling.ensure_prefix(long_prompt)  # > 1500 tokens: several batches
        t1 = time.monotonic()
        thread.join(120)
        assert result.prefilled > 2 * 512  # three batches
        during = [t for t in arrivals if t0 < t < t1]
        assert len(during) >= 2, (len(during), t1 - t0)
