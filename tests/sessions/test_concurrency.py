"""Many sessions on one model at once: each gets exactly its solo result."""

from __future__ import annotations

import threading

from conftest import MODEL, Served

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
