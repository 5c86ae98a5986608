"""Churn over a real daemon (the tiny fixture): the session table changes under the engine's feet
and no call ever comes back ``internal``.

Three clients run at once, each a thread with a ``modeldconn.Client`` of its own:

- the *driver* plays ``TURNS`` turns of ``EnsurePrefix`` + ``Decode`` over ``SESSIONS`` sessions
  that hold ~``TAPE``-token tapes. The tapes share a head and diverge from each other at varied
  points (most between token 600 and ``TAPE``, some inside the head), so every donor search has
  real work, and ``--max-live-sessions`` is far below ``SESSIONS``, so turns park and restore;
- the *opener* opens and closes sessions as fast as it can (every fourth one also makes a short
  prefix of the shared head resident, so it is a donor candidate for a moment);
- the *poller* reads Status and scrapes ``/metrics`` in a loop.

Every exception is counted by type. The test asserts none is ``InternalError`` (what a
``RuntimeError: dictionary changed size during iteration`` on the engine or Prometheus thread
reaches a client as) and none is untyped, that every turn completed, and that the accounting
adds up afterwards (Status and the metrics gauge agree with what the clients still hold open).

CI size is the issue's: 100 sessions, ~1k-token tapes, 200 turns, 8 live contexts (< 90 s per
backend on a 2-core machine). Bigger runs, e.g. the full size::

    MODELD_CHURN_SESSIONS=300 MODELD_CHURN_TURNS=2000 MODELD_CHURN_TAPE=1500 \\
        MODELD_CHURN_LIVE=8 .venv/bin/python -m pytest tests/sessions/test_churn.py \\
        -o timeout=3600 -s

``MODELD_CHURN_BACKENDS=llama`` (comma-separated) limits the backends.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial

import pytest
from daemons import Served, stop_served, wait_for
from served_models import BACKENDS, TINY, serve_tiny

import modeldconn

SESSIONS = int(os.environ.get("MODELD_CHURN_SESSIONS", "100"))
TURNS = int(os.environ.get("MODELD_CHURN_TURNS", "200"))
TAPE = int(os.environ.get("MODELD_CHURN_TAPE", "1000"))
LIVE = int(os.environ.get("MODELD_CHURN_LIVE", "8"))
HEAD = min(600, TAPE // 2)
#: tokens a driver turn appends before its EnsurePrefix, and then decodes
TURN_SUFFIX = 8
TURN_DECODE = 4
CHURN_BACKENDS = tuple(
    b for b in os.environ.get("MODELD_CHURN_BACKENDS", ",".join(BACKENDS)).split(",") if b
)
CORPUS = (
    "The daemon keeps one model hot for every client on the machine. A session holds a prompt "
    "prefix resident, appends only what changed, and streams tokens back as they are decoded. "
    "Once upon a time a small model lived on a laptop. It answered questions about the weather, "
    "the sea, the mountains and the stars. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2048."
)


@dataclass
class Tally:
    """What one client saw: calls made, and every exception by type (with a first example)."""

    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    untyped: int = 0
    internal: int = 0

    def attempt(self, what: str, fn: Callable[[], object]) -> bool:
        self.calls[what] += 1
        try:
            fn()
        except Exception as exc:
            name = f"{what}:{type(exc).__name__}"
            self.errors[name] += 1
            self.examples.setdefault(name, "".join(traceback.format_exception_only(exc)).strip())
            if isinstance(exc, modeldconn.InternalError):
                self.internal += 1
            elif not isinstance(exc, modeldconn.ModeldError):
                self.untyped += 1
            return False
        return True


def _scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _daemon_exceptions(log: str) -> dict[str, int]:
    """The last line of every traceback in the daemon's log, counted."""
    return dict(Counter(re.findall(r"^(?:\w+\.)*\w*(?:Error|Exception): .*$", log, re.MULTILINE)))


def _tapes(pool: list[int], rng: random.Random) -> tuple[list[int], list[list[int]]]:
    """A shared ``TAPE``-token base and one tape per session: ``base[:d]`` + its own tokens, with
    ``d`` spread over [HEAD, TAPE) for most sessions and inside the head for every tenth."""
    base = rng.choices(pool, k=TAPE)
    tapes = []
    for i in range(SESSIONS):
        inside_head = i % 10 == 9
        diverge = 16 + (i * 61) % (HEAD - 16) if inside_head else HEAD + (i * 37) % (TAPE - HEAD)
        own = rng.choices(pool, k=TAPE - diverge)
        while own and own[0] == base[diverge]:  # diverge exactly at ``diverge``
            own[0] = rng.choice(pool)
        tapes.append(base[:diverge] + own)
    return base, tapes


@pytest.fixture(scope="module", params=CHURN_BACKENDS)
def churned(request: pytest.FixtureRequest) -> Iterator[Served]:
    daemon = serve_tiny(
        request.param,
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-live-sessions",
        str(LIVE),
    )
    yield daemon
    stop_served(daemon)


@pytest.fixture
def setup(churned: Served) -> Iterator[modeldconn.Client]:
    """The client that opens (and holds) the driver's sessions."""
    with modeldconn.Client(data_root=churned.root) as client:
        yield client


def test_churn_never_answers_internal(churned: Served, setup: modeldconn.Client) -> None:
    started = time.monotonic()
    url = wait_for(
        "the metrics URL",
        lambda: (
            (m := re.search(r"metrics at (http://\S+)", churned.log.read_text())) and m.group(1)
        ),
        10,
    )
    root = churned.root
    pool = sorted(set(setup.tokenize(TINY, CORPUS)))
    rng = random.Random(20261201)
    base, tapes = _tapes(pool, rng)

    held = [setup.open_session(TINY) for _ in range(SESSIONS)]
    histories = []
    for session, tape in zip(held, tapes, strict=True):
        result = session.ensure_prefix(tape)
        assert result.prefix_tokens == len(tape)
        histories.append(list(tape))
    filled = time.monotonic()

    stop = threading.Event()
    driver, opener, poller = Tally(), Tally(), Tally()
    done_turns: list[int] = []
    opener_left_open: list[modeldconn.Session] = []
    polls = [0]

    def drive() -> None:
        turn_rng = random.Random(7)
        # the driver's own client, on the sessions the setup client opened (handles are global)
        with ExitStack() as finally_:
            finally_.callback(stop.set)  # the others stop with the driver, however it ends
            client = finally_.enter_context(modeldconn.Client(data_root=root))
            sessions = [modeldconn.Session(client, s.info) for s in held]
            for turn in range(TURNS):
                i = turn_rng.randrange(SESSIONS)
                history = histories[i] + turn_rng.choices(pool, k=TURN_SUFFIX)
                session = sessions[i]

                def one_turn(session: modeldconn.Session = session, h: list[int] = history) -> None:
                    result = session.ensure_prefix(h)
                    assert result.prefix_tokens == len(h), result
                    out = session.generate(max_tokens=TURN_DECODE, ignore_eos=True)
                    assert out.final is not None
                    assert out.final.completion_tokens == TURN_DECODE, out.final
                    h.extend(out.token_ids)

                if driver.attempt("turn", one_turn):
                    histories[i] = history
                    done_turns.append(turn)

    def churn() -> None:
        n = 0
        with modeldconn.Client(data_root=root) as client:
            opened: list[modeldconn.Session] = []
            while not stop.is_set():
                opened.clear()
                if not opener.attempt("open", lambda: opened.append(client.open_session(TINY))):
                    continue
                session = opened[0]
                n += 1
                if n % 4 == 0:
                    prefix = base[: 32 + (n * 29) % (HEAD - 32)]
                    opener.attempt("prefix", partial(session.ensure_prefix, prefix))
                if not opener.attempt("close", session.close):
                    opener_left_open.append(session)

    def poll() -> None:
        with modeldconn.Client(data_root=root) as client:
            while not stop.is_set():
                poller.attempt("status", client.status)
                poller.attempt("metrics", lambda: _scrape(url))
                polls[0] += 1
                time.sleep(0.005)

    threads = [threading.Thread(target=f, name=f.__name__) for f in (drive, churn, poll)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1800)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    churned_at = time.monotonic()

    errors = driver.errors + opener.errors + poller.errors
    examples = {**driver.examples, **opener.examples, **poller.examples}
    report = (
        f"backend {churned.backend}: {SESSIONS} sessions x ~{TAPE} tokens, {LIVE} live; "
        f"turns {len(done_turns)}/{TURNS}, opened {opener.calls['open']}, "
        f"polls {polls[0]}; setup {filled - started:.1f} s, churn {churned_at - filled:.1f} s; "
        f"errors by type {dict(errors)}; first of each: {examples}; "
        f"daemon-side exceptions: {_daemon_exceptions(churned.log.read_text())}"
    )
    print(report)
    assert driver.internal + opener.internal + poller.internal == 0, report
    assert driver.untyped + opener.untyped + poller.untyped == 0, report
    assert len(done_turns) == TURNS, report
    assert opener.calls["open"] >= 10 and polls[0] >= 3, report
    assert churned.alive(), churned.log.read_text()[-4000:]

    # accounting: the daemon counts exactly what the clients still hold open
    still_open = SESSIONS + len(opener_left_open)
    status = setup.status()
    assert status.sessions_open == still_open, (status, report)
    assert status.sessions_live + status.sessions_parked == status.sessions_open, status
    assert status.sessions_live <= LIVE, status
    assert status.parks > 0 and status.restores > 0, status  # the turns parked and restored
    samples = _scrape(url)
    gauge = samples['modeld_sessions{state="live"}'] + samples['modeld_sessions{state="parked"}']
    assert gauge == still_open, samples
    for session in opener_left_open:
        session.close()
    for session in held:
        session.close()
    wait_for("every session closed", lambda: churned.client.status().sessions_open == 0, 10)
    after = churned.client.status()
    assert after.sessions_live == after.sessions_parked == 0, after
    assert after.parked_ram_bytes == after.parked_disk_bytes == 0, after
    assert "Traceback" not in churned.log.read_text(), churned.log.read_text()[-4000:]
