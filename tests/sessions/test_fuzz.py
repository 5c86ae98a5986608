"""Random RPC sequences and field values against a live daemon: zero crashes, every error typed,
the session accounting consistent afterwards.

Sized for CI; `MODELD_FUZZ_EXAMPLES=2000 pytest tests/sessions/test_fuzz.py` runs the full size.
"""

from __future__ import annotations

import os
from typing import Any

from daemons import Served
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from served_models import GEMMA as MODEL

import modeldconn

EXAMPLES = int(os.environ.get("MODELD_FUZZ_EXAMPLES", "60"))
VOCAB = 262_144

texts = st.text(max_size=200) | st.sampled_from(["", "\x00", "🚀" * 50, "<start_of_turn>"])
token_ids = st.lists(
    st.integers(min_value=-5, max_value=VOCAB + 5) | st.integers(0, 5000), max_size=64
)
chats = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", ""]),
            "content": st.text(max_size=40),
        }
    ),
    min_size=1,
    max_size=3,
)
inputs = texts | token_ids | chats
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
decode_configs = st.fixed_dictionaries(
    {},
    optional={
        "max_tokens": st.integers(-1, 12),
        "temperature": floats,
        "top_k": st.integers(-3, 100),
        "top_p": floats,
        "min_p": floats,
        "repeat_penalty": floats,
        "repeat_last_n": st.integers(-3, 100),
        "seed": st.integers(0, 2**32),
        "stop": st.lists(st.text(max_size=8), max_size=3),
        "ignore_eos": st.booleans(),
    },
)
operations = st.one_of(
    st.tuples(st.just("ensure_prefix"), inputs),
    st.tuples(st.just("prefill_suffix"), inputs),
    st.tuples(st.just("decode"), decode_configs),
    st.tuples(st.just("decode_suffix"), inputs),
    st.tuples(st.just("tokenize"), texts),
    st.tuples(st.just("detokenize"), token_ids),
    st.tuples(st.just("close_and_reuse"), st.none()),
)

cases = {"ran": 0, "typed_errors": 0}


def _run(session: modeldconn.Session, op: str, arg: Any) -> None:
    if op == "ensure_prefix":
        session.ensure_prefix(arg)
    elif op == "prefill_suffix":
        session.prefill_suffix(arg)
    elif op == "decode":
        session.generate(**{"max_tokens": 4, **arg})
    elif op == "decode_suffix":
        session.generate(max_tokens=3, suffix=arg)
    elif op == "tokenize":
        session.tokenize(arg)
    elif op == "detokenize":
        session.detokenize(arg)
    else:
        session.close()
        session.ensure_prefix("after close")  # must be session_not_found, typed


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=st.lists(operations, min_size=1, max_size=6))
def test_random_sequences_only_ever_fail_typed(served: Served, steps: list[Any]) -> None:
    session = served.client.open_session(MODEL, n_ctx=256)
    try:
        for op, arg in steps:
            try:
                _run(session, op, arg)
            except modeldconn.RemoteError as error:
                assert not isinstance(error, (modeldconn.InternalError, modeldconn.Unavailable)), (
                    op,
                    arg,
                    error,
                )
                cases["typed_errors"] += 1
            except TypeError:
                pass  # refused by modeldconn itself before anything was sent
    finally:
        session.close()
    cases["ran"] += 1


def test_after_the_fuzz_the_daemon_is_whole(served: Served) -> None:
    status = served.client.status()
    assert served.alive() and status.sessions_open == 0 and status.queue_depth == 0
    with served.client.open_session(MODEL) as session:
        session.ensure_prefix("Still here:")
        assert session.generate(max_tokens=4).final.completion_tokens == 4
    print(f"fuzz: {cases['ran']} sequences, {cases['typed_errors']} typed errors")
