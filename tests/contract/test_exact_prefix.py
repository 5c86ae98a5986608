"""exact_prefix on the tiny fixture, both backends: a warm turn equals one cold EnsurePrefix of
the whole prompt (issue 21), through chats, shared prefixes, snapshots and parking."""

from __future__ import annotations

import exact_prefix_checks as checks
from daemons import Served, stop_served
from served_models import TINY, serve_tiny

import modeldconn
from modeld.sessions._prefill import PREFIX_CHUNK


def test_open_session_and_status_report_it(client: modeldconn.Client) -> None:
    status = client.status()
    assert status.exact_prefix is False  # the daemon default (modeld serve --exact-prefix)
    assert status.prefix_chunk == PREFIX_CHUNK
    with client.open_session(TINY) as default:
        assert default.info.exact_prefix is status.exact_prefix
        assert default.info.prefix_chunk == PREFIX_CHUNK
    with client.open_session(TINY, exact_prefix=True) as asked:
        assert asked.info.exact_prefix is True


def test_warm_turn_equals_cold_prompt(client: modeldconn.Client) -> None:
    checks.check_warm_equals_cold(client, TINY)


def test_every_chat_turn_equals_the_whole_history_cold(client: modeldconn.Client) -> None:
    checks.check_chat(client, TINY)


def test_shared_prefixes_and_snapshots_keep_it(client: modeldconn.Client) -> None:
    checks.check_kept_through(client, TINY, PREFIX_CHUNK)


def test_reuse_stops_at_the_last_whole_chunk(client: modeldconn.Client) -> None:
    doc = checks.document(client, TINY, 3 * PREFIX_CHUNK + 20)
    p = 2 * PREFIX_CHUNK + 5
    with client.open_session(TINY, exact_prefix=True) as session:
        first = session.ensure_prefix(doc[:p])
        assert (first.reused, first.prefilled) == (0, p)
        same = session.ensure_prefix(doc[:p])  # the prompt's own last chunk: kept whole
        assert (same.reused, same.prefilled) == (p, 0)
        longer = session.ensure_prefix(doc[: p + 10])  # the partial chunk is recomputed
        assert (longer.reused, longer.prefilled) == (2 * PREFIX_CHUNK, 15)
        session.generate(max_tokens=4, ignore_eos=True)
        # generated rows are never kept: the next turn recomputes them as aligned chunks
        after = session.ensure_prefix([*doc[: p + 10], doc[0]])
        assert after.reused == 2 * PREFIX_CHUNK


def test_parking_keeps_it(backend: str) -> None:
    served: Served = serve_tiny(backend, "--max-live-sessions", "1")
    try:
        client = served.client
        doc = checks.document(client, TINY, 8 * PREFIX_CHUNK)
        p, s = 5 * PREFIX_CHUNK + 7, PREFIX_CHUNK - 1
        want = checks.cold(client, TINY, doc[: p + s], "greedy")
        with client.open_session(TINY, exact_prefix=True) as warm:
            warm.ensure_prefix(doc[:p])
            warm.generate(max_tokens=3, ignore_eos=True)
            with client.open_session(TINY, exact_prefix=True) as other:
                other.ensure_prefix(doc[p : p + 40])  # takes the one live context
                assert client.status().sessions_parked >= 1
            assert warm.ensure_prefix(doc[:p]).reused == p  # restored, still whole
            got = warm.generate(suffix=doc[p : p + s], max_tokens=checks.OUT, ignore_eos=True)
            assert got.token_ids == want
    finally:
        stop_served(served)
