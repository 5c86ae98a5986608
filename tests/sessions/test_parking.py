"""Three times more sessions than live contexts: parked, restored, and every turn still right."""

from __future__ import annotations

from pathlib import Path

from daemons import Served, stop_served
from served_models import start_gemma

import modeldconn

MODEL = "gemma3-270m"
CONVERSATIONS = 6
LIVE = 2
TURNS = 3


def _system(i: int) -> str:
    return f"Conversation {i}. " + "A traveller's diary about rivers, towns and mountains. " * 6


def _turn(session: modeldconn.Session, history: list[int], text: str) -> list[int]:
    history = history + session.tokenize(text)
    session.ensure_prefix(history)
    out = session.generate(max_tokens=8, ignore_eos=True)
    return history + list(out.token_ids)


def _reference(client: modeldconn.Client) -> list[list[list[int]]]:
    """Each conversation alone in one never-parked session, turn by turn."""
    runs = []
    for i in range(CONVERSATIONS):
        with client.open_session(MODEL) as session:
            history = session.tokenize(_system(i), add_special=True)
            session.ensure_prefix(history)
            turns = []
            for t in range(TURNS):
                history = _turn(session, history, f"\nDay {t + 1}:")
                turns.append(history)
            runs.append(turns)
    return runs


def test_round_robin_over_more_sessions_than_live_contexts(
    gemma_file: Path, served: Served
) -> None:
    expected = _reference(served.client)
    tight: Served = start_gemma(
        gemma_file, "--max-live-sessions", str(LIVE), "--park-ram", "3MB"
    )  # a few in RAM, the rest on disk
    try:
        client = tight.client
        sessions = [client.open_session(MODEL) for _ in range(CONVERSATIONS)]
        histories = []
        for i, session in enumerate(sessions):
            history = session.tokenize(_system(i), add_special=True)
            session.ensure_prefix(history)
            histories.append(history)
        for t in range(TURNS):
            for i, session in enumerate(sessions):
                histories[i] = _turn(session, histories[i], f"\nDay {t + 1}:")
                assert histories[i] == expected[i][t], (i, t)
        status = client.status()
        assert status.sessions_open == CONVERSATIONS
        assert status.sessions_live <= LIVE
        assert status.sessions_parked == CONVERSATIONS - status.sessions_live
        assert status.parks >= CONVERSATIONS * TURNS - LIVE
        assert status.restores >= CONVERSATIONS * TURNS - LIVE
        assert status.parked_disk_bytes > 0  # the RAM tier overflowed to disk
        assert list((tight.root / "parked").glob("*.kv"))
        for session in sessions:
            session.close()
        after = client.status()
        assert after.sessions_open == 0 and after.parked_ram_bytes == after.parked_disk_bytes == 0
        assert not list((tight.root / "parked").glob("*.kv"))
    finally:
        stop_served(tight)


def test_parked_between_prefill_and_decode_samples_from_the_saved_logits(
    gemma_file: Path, served: Served
) -> None:
    prompt, suffix = _system(0), " In the morning the river"
    with served.client.open_session(MODEL) as alone:
        alone.ensure_prefix(prompt)
        alone.prefill_suffix(suffix)
        expected = alone.generate(max_tokens=16).token_ids
    one: Served = start_gemma(gemma_file, "--max-live-sessions", "1")
    try:
        with one.client.open_session(MODEL) as a, one.client.open_session(MODEL) as b:
            a.ensure_prefix(prompt)
            a.prefill_suffix(suffix)  # a's logits are current...
            b.ensure_prefix(_system(1))  # ...when b's turn parks a
            assert one.client.status().sessions_parked == 1
            assert a.generate(max_tokens=16).token_ids == expected
            assert one.client.status().restores >= 1
    finally:
        stop_served(one)
