"""Nothing leaks: a client that goes away (closed or killed) takes its sessions with it, and
idle sessions are parked, then closed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from daemons import Served, stop_served, wait_for
from served_models import GEMMA as MODEL
from served_models import start_gemma

import modeldconn

DECODING_CLIENT = textwrap.dedent(
    """
    import sys, modeldconn
    client = modeldconn.Client(data_root=sys.argv[1])
    sessions = [client.open_session("gemma3-270m") for _ in range(3)]
    for s in sessions:
        s.ensure_prefix("Once upon a time in a land far away,")
    print("decoding", flush=True)
    for chunk in sessions[0].decode(max_tokens=100000, ignore_eos=True):
        pass
    """
)


def _open_sessions(served: Served) -> int:
    return int(served.client.status().sessions_open)


def test_killed_client_mid_decode_leaks_nothing(served: Served) -> None:
    client = served.client
    with client.open_session(MODEL) as bystander:
        bystander.ensure_prefix("The weather today is")
        expected = bystander.generate(max_tokens=8).token_ids
        before = _open_sessions(served)
        proc = subprocess.Popen(
            [sys.executable, "-c", DECODING_CLIENT, str(served.root)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "decoding"
        wait_for("its sessions", lambda: _open_sessions(served) == before + 3, 10)
        time.sleep(0.3)  # mid-Decode
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        wait_for("its sessions to be closed", lambda: _open_sessions(served) == before, 10)
        wait_for("the engine queue to drain", lambda: served.client.status().queue_depth == 0, 10)
        # the bystander never noticed
        bystander.ensure_prefix("The weather today is")
        assert bystander.generate(max_tokens=8).token_ids == expected


def test_closing_the_client_closes_its_sessions(served: Served) -> None:
    before = _open_sessions(served)
    other = modeldconn.Client(data_root=served.root)
    for _ in range(2):
        other.open_session(MODEL).ensure_prefix("Hello")
    assert _open_sessions(served) == before + 2
    other.close()
    wait_for("the sessions to close", lambda: _open_sessions(served) == before, 10)


def test_idle_sessions_are_parked_then_closed(gemma_file: Path) -> None:
    daemon = start_gemma(gemma_file, "--idle-park", "1", "--idle-close", "4")
    try:
        session = daemon.client.open_session(MODEL)
        session.ensure_prefix("A quiet afternoon by the sea.")
        wait_for("parking", lambda: daemon.client.status().sessions_parked == 1, 10)
        # parked is not gone: using it restores it, transparently
        assert session.ensure_prefix("A quiet afternoon by the sea.").prefilled == 0
        wait_for("closing", lambda: daemon.client.status().sessions_open == 0, 15)
        assert daemon.client.status().sessions_reaped >= 1
        try:
            session.ensure_prefix("again")
            raise AssertionError("a reaped session must be gone")
        except modeldconn.SessionNotFound:
            pass
    finally:
        stop_served(daemon)


def test_weights_unload_after_a_long_idle_and_parked_sessions_survive(
    gemma_file: Path, served: Served
) -> None:
    prompt, suffix = "Minutes of the village council, spring session. ", "Item one:"
    with served.client.open_session(MODEL) as reference:
        reference.ensure_prefix(prompt)
        reference.prefill_suffix(suffix)
        expected = reference.generate(max_tokens=12).token_ids
    daemon = start_gemma(
        gemma_file, "--idle-park", "0.5", "--unload-after", "1", "--idle-close", "0"
    )
    try:
        session = daemon.client.open_session(MODEL)
        session.ensure_prefix(prompt)
        session.prefill_suffix(suffix)
        wait_for(
            "the weights to unload", lambda: not daemon.client.status().models[0].weights_loaded, 20
        )
        status = daemon.client.status()
        assert status.sessions_parked == 1 and status.model_loads == 1
        assert session.generate(max_tokens=12).token_ids == expected  # reloaded, restored
        assert daemon.client.status().model_loads == 2
    finally:
        stop_served(daemon)
