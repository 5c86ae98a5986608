"""Session control on a real daemon (the tiny fixture; the behaviour is the session layer's, not
the model's): ListSessions follows the tiers as sessions are evicted and idle-parked, a pin
survives an --idle-park that parks everything else, another client's session is
permission_denied on every verb, an unknown handle is session_not_found, ExplainSession repeats
the EnsurePrefix replies, and the CLI prints the same."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import pytest
from daemons import Served, run_modeld, stop_served, wait_for
from served_models import serve_tiny

import modeldconn

N_CTX = 256
PROMPT = list(range(1, 150))


@pytest.fixture(scope="module")
def tiny() -> Iterator[Served]:
    daemon = serve_tiny("llama", "--idle-park", "1.5", "--max-live-sessions", "4")
    yield daemon
    stop_served(daemon)


def _where(client: modeldconn.Client, handle: str) -> str:
    [listed] = [s for s in client.list_sessions(operator=True) if s.handle == handle]
    return listed.residency


def test_tiers_move_under_evict_and_a_pin_survives_the_idle_reaper(tiny: Served) -> None:
    client = tiny.client
    sessions = [client.open_session("tiny", n_ctx=N_CTX) for _ in range(3)]
    try:
        replies = [s.ensure_prefix(PROMPT[: 100 + i]) for i, s in enumerate(sessions)]
        pinned, evicted, idle = sessions
        assert client.pin_session(pinned.handle, 120).pinned
        mine = {s.handle: s for s in client.list_sessions()}
        assert set(mine) == {s.handle for s in sessions}
        for session, reply in zip(sessions, replies, strict=True):
            listed = mine[session.handle]
            assert (listed.residency, listed.tape_tokens, listed.n_ctx) == (
                "live",
                reply.prefix_tokens,
                N_CTX,
            )
            assert listed.prefix_hash == reply.prefix_hash
            assert listed.kv_cache_type in ("f16", "q8_0", "q4_0") and listed.kv_bytes > 0
            assert listed.client_id and "pid" in listed.client_name

        # live -> ram -> disk by EvictSession, each step seen by ListSessions
        assert client.evict_session(evicted.handle, "ram").residency == "ram"
        assert _where(client, evicted.handle) == "ram"
        on_disk = client.evict_session(evicted.handle, "disk")
        assert on_disk.residency == "disk" and on_disk.kv_bytes > 0
        assert list((tiny.root / "parked").glob("*.kv"))

        # --idle-park 1.5: the idle one parks on its own, the pinned one stays live
        wait_for("the idle session to park", lambda: _where(client, idle.handle) == "ram", 10)
        time.sleep(2)  # a few more reaper rounds
        assert _where(client, pinned.handle) == "live"
        assert client.list_sessions()[0].pin_remaining_s > 100

        # a turn on the disk-parked one restores it, and ExplainSession says from where
        again = evicted.ensure_prefix(PROMPT[:101])
        assert (again.reused, again.prefilled) == (replies[1].prefix_tokens, 0)
        turns = client.explain_session(evicted.handle).turns
        assert [t.operation for t in turns] == ["ensure_prefix", "ensure_prefix"]
        assert turns[-1].restored_from == "disk"
        assert _where(client, evicted.handle) == "live"
    finally:
        for session in sessions:
            session.close()


def test_explain_repeats_the_ensure_prefix_replies(tiny: Served) -> None:
    with tiny.client.open_session("tiny", n_ctx=N_CTX) as session:
        first = session.ensure_prefix(PROMPT[:140])
        second = session.ensure_prefix([*PROMPT[:90], 7, 7, 7])
        completion = session.generate(max_tokens=4, ignore_eos=True)
        explained = tiny.client.explain_session(session.handle)
        ensure = [t for t in explained.turns if t.operation == "ensure_prefix"]
        for turn, reply in zip(ensure, (first, second), strict=True):
            assert (turn.reused, turn.prefilled, turn.dropped, turn.shared) == (
                reply.reused,
                reply.prefilled,
                reply.dropped,
                reply.shared,
            )
        assert (ensure[1].reused, ensure[1].dropped) == (90, 50)
        assert explained.turns[-1].operation == "decode"
        assert explained.turns[-1].generated == completion.final.completion_tokens == 4
        assert explained.session.tape_tokens == 93 + 4
        assert len(tiny.client.explain_session(session.handle, 1).turns) == 1


def test_another_clients_session_is_permission_denied_on_every_verb(tiny: Served) -> None:
    owner = tiny.client
    other = modeldconn.Client(data_root=tiny.root)
    try:
        with owner.open_session("tiny", n_ctx=N_CTX) as session:
            session.ensure_prefix(PROMPT[:20])
            calls: list[Callable[[], object]] = [
                lambda: other.explain_session(session.handle),
                lambda: other.evict_session(session.handle, "ram"),
                lambda: other.pin_session(session.handle, 10),
                lambda: other.fork(session.handle),
            ]
            for call in calls:
                with pytest.raises(modeldconn.PermissionDenied) as denied:
                    call()
                assert denied.value.metadata["handle"] == session.handle
            assert session.handle not in {s.handle for s in other.list_sessions()}
            assert session.handle in {s.handle for s in other.list_sessions(operator=True)}
            assert _where(owner, session.handle) == "live"  # nothing was done to it

            unknown = session.handle.rpartition("/")[0] + "/" + "0" * 32
            for call in (
                lambda: owner.explain_session(unknown),
                lambda: owner.evict_session(unknown, "drop"),
                lambda: owner.pin_session(unknown, 1),
                lambda: owner.fork(unknown),
            ):
                with pytest.raises(modeldconn.SessionNotFound):
                    call()
            with pytest.raises(modeldconn.InvalidArgument) as past:
                session.fork(21)
            assert past.value.metadata["field"] == "at_tokens"
    finally:
        other.close()


def test_the_cli_lists_shows_evicts_and_pins(tiny: Served) -> None:
    root = str(tiny.root)
    with tiny.client.open_session("tiny", n_ctx=N_CTX) as session:
        session.ensure_prefix(PROMPT[:30])
        listed = run_modeld("sessions", "list", "--json", "--data-root", root)
        assert listed.returncode == 0, listed.stderr
        [row] = [s for s in json.loads(listed.stdout)["sessions"] if s["handle"] == session.handle]
        assert (row["residency"], row["tape_tokens"]) == ("live", 30)
        table = run_modeld("sessions", "list", "--data-root", root)
        assert session.handle in table.stdout and "WHERE" in table.stdout

        evicted = run_modeld(
            "sessions", "evict", session.handle, "--to", "drop", "--json", "--data-root", root
        )
        assert json.loads(evicted.stdout)["session"]["residency"] == "dropped"
        pinned = run_modeld("sessions", "pin", session.handle, "--ttl", "30", "--data-root", root)
        assert "pinned for 30 s" in pinned.stdout

        shown = run_modeld("sessions", "show", session.handle, "--json", "--data-root", root)
        body = json.loads(shown.stdout)
        assert body["session"]["pinned"] and body["turns"][0]["prefilled"] == 30
        unknown = run_modeld("sessions", "show", session.handle + "0", "--data-root", root)
        assert unknown.returncode == 1 and "session_not_found" in unknown.stderr


def test_the_asyncio_twins(tiny: Served) -> None:
    async def run() -> None:
        async with modeldconn.AsyncClient(data_root=tiny.root) as client:
            session = await client.open_session("tiny", n_ctx=N_CTX)
            await session.ensure_prefix(PROMPT[:40])
            fork = await session.fork(30)
            listed = {s.handle: s for s in await client.list_sessions()}
            assert (listed[session.handle].tape_tokens, listed[fork.handle].tape_tokens) == (40, 30)
            assert (await client.pin_session(fork.handle, 5)).pinned
            assert (await client.evict_session(fork.handle, "disk")).residency == "disk"
            turns = (await client.explain_session(fork.handle)).turns
            assert [(t.operation, t.shared) for t in turns] == [("fork", 30)]
            assert listed[fork.handle].client_id == listed[session.handle].client_id

    asyncio.run(run())
