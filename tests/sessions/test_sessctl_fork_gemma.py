"""ForkSession on Gemma 3 270M: a fork at k, then a greedy Decode, gives exactly the tokens of a
fresh session fed the first k tokens; the source continues as if never forked."""

from __future__ import annotations

from daemons import Served

import modeldconn

MODEL = "gemma3-270m"
TEXT = "A traveller's diary about rivers, towns and mountains, written day by day. " * 10


def _greedy(session: modeldconn.Session, n: int = 12) -> list[int]:
    return list(session.generate(max_tokens=n, ignore_eos=True).token_ids)


def test_fork_at_k_then_greedy_equals_a_fresh_session_of_the_first_k_tokens(
    served: Served,
) -> None:
    client = served.client
    with client.open_session(MODEL, exact_prefix=True) as source:
        tape = source.tokenize(TEXT, add_special=True)
        assert len(tape) > 140
        source.ensure_prefix(tape)
        generated = _greedy(source, 6)
        whole = tape + generated
        for k in (64, 128, 141, len(tape), len(whole)):
            with source.fork(k) as fork:
                explained = client.explain_session(fork.handle)
                assert explained.session.tape_tokens == k
                assert explained.turns[-1].operation == "fork"
                # exact_prefix: whole 128-token chunks copied, or the source's exact prompt
                # whole; the rest is recomputed as a cold run would
                copied = k if k == len(tape) else min(k, len(tape)) // 128 * 128
                assert explained.turns[-1].shared == copied, k
                forked = _greedy(fork)
            with client.open_session(MODEL, exact_prefix=True) as fresh:
                fresh.ensure_prefix(whole[:k])
                assert forked == _greedy(fresh), k
        # the source was left as it was: it continues exactly as a fresh run of its tape
        after = _greedy(source)
    with client.open_session(MODEL, exact_prefix=True) as fresh:
        fresh.ensure_prefix(whole)
        assert after == _greedy(fresh)
