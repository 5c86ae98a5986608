"""A takeover while a client loops: a leader and a standby, both started with the same
``--http-listen`` address; the client (the official openai SDK, with its own retries and
backoff, as every tool uses it) loops chat turns; the leader is killed with ``kill -9``. At
most one call fails, then every call is served by the new leader on the same address (the
listener rebinds at once past TIME_WAIT: ``SO_REUSEADDR``)."""

from __future__ import annotations

import signal
import socket
import time

import openai
from daemons import DaemonPool, wait_for
from served_models import TINY, TINY_FILE, require_backend

#: calls served by the new leader before the loop ends
AFTER = 5
#: the loop's limit, far above a takeover (~TTL 1.5 s + a load of the fixture + the bind)
LOOP_LIMIT_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_client_loop_survives_kill_9_of_the_leader(daemons: DaemonPool) -> None:
    require_backend("llama")
    (daemons.root / "models").mkdir()
    (daemons.root / "models" / f"{TINY}.gguf").symlink_to(TINY_FILE)
    address = f"127.0.0.1:{_free_port()}"
    args = ("--backend", "llama", "--model", TINY, "--threads", "1", "--http-listen", address)
    daemons.start(*args)
    first = daemons.wait_leader()
    daemons.start(*args)
    wait_for("the standby", lambda: "standing by" in daemons.started[1].log(), 20)
    # backoff 0.5, 1, 2, 4 s between attempts (jittered): enough for the takeover gap
    client = openai.OpenAI(
        base_url=f"http://{address}/v1", api_key="unused", max_retries=4, timeout=20.0
    )
    messages = [
        {"role": "system", "content": "You are a careful assistant. " * 6},
        {"role": "user", "content": "Say something."},
    ]
    failures: list[Exception] = []
    served_by: list[int] = []  # the lease holder just after each successful call
    killed = False
    deadline = time.monotonic() + LOOP_LIMIT_S
    with client:
        while sum(1 for pid in served_by if pid != first) < AFTER:
            assert time.monotonic() < deadline, f"the loop did not recover: {failures}"
            if not killed and len(served_by) == 3:
                daemons.by_pid(first).signal(signal.SIGKILL)
                killed = True
            try:
                reply = client.chat.completions.create(
                    model=TINY,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=4,
                    temperature=0,
                )
            except (openai.APIConnectionError, openai.APIStatusError) as error:
                failures.append(error)
                continue
            assert reply.choices[0].finish_reason == "length"
            served_by.append(daemons.leader_pid() or 0)
    second = daemons.leader_pid()
    assert second not in (None, first)
    assert len(failures) <= 1, failures
    assert daemons.by_pid(first).wait(5) == -signal.SIGKILL
    # the new leader advertises the same address it took over
    log = daemons.by_pid(second).log() if second else ""
    assert f"HTTP API at http://{address}" in log
