"""Many clients hanging up mid-stream at once: no session leaks, the daemon and everyone else
carry on. Full size is the default here (the tiny model makes 100 clients cheap);
MODELD_DISCONNECT_CLIENTS changes it."""

from __future__ import annotations

import os
import threading

from daemons import Served, wait_for
from served_models import TINY as MODEL

import modeldconn

CLIENTS = int(os.environ.get("MODELD_DISCONNECT_CLIENTS", "100"))
PROMPT = "User: tell me a story about the river town.\nAssistant:"


def _hang_up_mid_stream(root: object, started: threading.Barrier, errors: list[str]) -> None:
    client = modeldconn.Client(data_root=root)  # type: ignore[arg-type]
    try:
        session = client.open_session(MODEL, n_ctx=256)
        session.ensure_prefix(PROMPT)
        stream = iter(session.decode(max_tokens=200, ignore_eos=True))
        started.wait(60)  # everyone is mid-stream now
        next(stream)
    except Exception as exc:  # collected: any failure before the hang-up is a finding
        errors.append(repr(exc))
        started.abort()
    finally:
        client.close()  # hangs up the stream and the lifeline together


def test_a_hundred_clients_hanging_up_mid_stream(served: Served) -> None:
    client = served.client
    with client.open_session(MODEL) as bystander:
        bystander.ensure_prefix(PROMPT)
        expected = bystander.generate(max_tokens=16).token_ids
        before = int(client.status().sessions_open)
        started = threading.Barrier(CLIENTS)
        errors: list[str] = []
        threads = [
            threading.Thread(target=_hang_up_mid_stream, args=(served.root, started, errors))
            for _ in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        # meanwhile, the bystander's turns come out exactly as before
        for _ in range(3):
            bystander.ensure_prefix(PROMPT)
            assert bystander.generate(max_tokens=16).token_ids == expected
        for thread in threads:
            thread.join(120)
        assert errors == []
        wait_for(
            "every hung-up session to be closed",
            lambda: int(client.status().sessions_open) == before,
            30,
        )
        wait_for("the engine queue to drain", lambda: client.status().queue_depth == 0, 30)
        assert served.alive()
        bystander.ensure_prefix(PROMPT)
        assert bystander.generate(max_tokens=16).token_ids == expected
