"""Several sessions decoding at once: each gets its solo tokens, batched where the backend can.

On a backend whose capabilities say ``batched_decode``, the sessions' decode steps share engine
calls (Status counts the tokens per call); elsewhere every call computes one session's token.
Either way, a session's tokens are the ones it gets alone, and one session's end, cancellation
or error leaves the others' streams unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from daemons import Served, stop_served
from served_models import TINY as MODEL
from served_models import serve_tiny

from modeldconn import Client, Session

SESSIONS = 6
TOKENS = 20
LONG = 200


def _prompt(i: int) -> str:
    topics = ["the river", "a bakery", "old maps", "the harbour", "winter", "a library"]
    return f"Letter {i}, about {topics[i % len(topics)]}. Dear friend, " + "the day was " * i


def _at_once(jobs: list[Callable[[], tuple[int, ...]]]) -> list[tuple[int, ...]]:
    results: dict[int, tuple[int, ...]] = {}
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait()
        results[i] = jobs[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return [results[i] for i in range(len(jobs))]


def _decode(
    session: Session, tokens: int = TOKENS, **sampling: object
) -> Callable[[], tuple[int, ...]]:
    def job() -> tuple[int, ...]:
        return session.generate(max_tokens=tokens, ignore_eos=True, **sampling).token_ids  # type: ignore[arg-type]

    return job


def _solo(client: Client, i: int, **sampling: object) -> tuple[int, ...]:
    with client.open_session(MODEL) as session:
        session.ensure_prefix(_prompt(i))
        return _decode(session, **sampling)()


def _open(client: Client) -> list[Session]:
    sessions = [client.open_session(MODEL) for _ in range(SESSIONS)]
    for i, session in enumerate(sessions):
        session.ensure_prefix(_prompt(i))
    return sessions


def test_sessions_decoding_at_once_get_their_solo_tokens(served: Served, backend: str) -> None:
    client = served.client
    greedy = [_solo(client, i) for i in range(SESSIONS)]
    seeded = [_solo(client, i, temperature=0.9, seed=7 + i) for i in range(SESSIONS)]
    before = client.status()
    sessions = _open(client)
    try:
        assert _at_once([_decode(s) for s in sessions]) == greedy
        # rewind the tapes and decode again, sampled with seeds this time
        for i, session in enumerate(sessions):
            session.ensure_prefix(_prompt(i))
        jobs = [_decode(s, temperature=0.9, seed=7 + i) for i, s in enumerate(sessions)]
        assert _at_once(jobs) == seeded
    finally:
        for session in sessions:
            session.close()
    after = client.status()
    calls = after.decode_calls - before.decode_calls
    rows = after.decode_rows - before.decode_rows
    assert rows == 2 * SESSIONS * (TOKENS - 1)  # every token after the first, computed once
    (model,) = after.models
    if model.decode_batch_rows > 1:  # as many rows per call as are exact here (llama: measured)
        assert rows / calls > min(SESSIONS, model.decode_batch_rows) / 2, (rows, calls)
    else:
        assert rows == calls


def test_a_session_leaving_mid_batch_changes_nobody_elses_tokens(served: Served) -> None:
    client = served.client
    greedy = [_solo(client, i) for i in range(SESSIONS)]
    sessions = _open(client)

    def leave_early() -> tuple[int, ...]:
        ids: list[int] = []
        stream = sessions[0].decode(max_tokens=TOKENS, ignore_eos=True)
        for chunk in stream:
            ids.extend(chunk.token_ids)
            if len(ids) >= 5:
                break
        stream.close()  # cancels the call: the daemon closes the stream mid-batch
        return tuple(ids)

    def short() -> tuple[int, ...]:
        return sessions[1].generate(max_tokens=3, ignore_eos=True).token_ids

    try:
        out = _at_once([leave_early, short, *(_decode(s) for s in sessions[2:])])
        assert out[0] == greedy[0][:5] and out[1] == greedy[1][:3]
        assert out[2:] == greedy[2:]
        # the one that left continues where its tape ends, as if nobody else had been there
        assert sessions[0].generate(max_tokens=4, ignore_eos=True).token_ids
    finally:
        for session in sessions:
            session.close()
    status = client.status()
    assert status.sessions_open == 0


def test_the_operator_can_choose_the_batch_width(served: Served, backend: str) -> None:
    """``--decode-batch-rows 2``: two rows a call, and Status says whether that is exact."""
    with served.client.open_session(MODEL):
        (default,) = served.client.status().models  # the width measured exact on this machine
    daemon = serve_tiny(backend, "--decode-batch-rows", "2")
    try:
        client = daemon.client
        sessions = [client.open_session(MODEL) for _ in range(3)]
        for i, session in enumerate(sessions):
            session.ensure_prefix(_prompt(i))
        before = client.status()
        # long enough that the streams overlap on the engine whatever the threads' start skew
        out = _at_once([_decode(s, LONG) for s in sessions])
        after = client.status()
        (model,) = after.models
        assert model.decode_batch_rows == 2
        assert model.decode_batch_exact == (default.decode_batch_rows >= 2)
        assert [len(tokens) for tokens in out] == [LONG] * 3
        calls = after.decode_calls - before.decode_calls
        rows = after.decode_rows - before.decode_rows
        assert rows == 3 * (LONG - 1) and rows / calls <= 2 and calls < rows
        for session in sessions:
            session.close()
    finally:
        stop_served(daemon)
