"""A session from another process starts warm from KV another session already holds."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from daemons import Served
from served_models import TINY as MODEL

SYSTEM = "You are a careful assistant. Answer briefly and precisely. " * 12
QUESTION = "\nQ: What is the largest planet in the solar system?\nA:"

OTHER_PROCESS = textwrap.dedent(
    """
    import json, sys, modeldconn
    client = modeldconn.Client(data_root=sys.argv[1])
    with client.open_session(sys.argv[4]) as session:
        prefix = session.ensure_prefix(sys.argv[2])
        out = session.generate(suffix=sys.argv[3], max_tokens=16)
        print(json.dumps({"reused": prefix.reused, "shared": prefix.shared,
                          "prefilled": prefix.prefilled, "tokens": list(out.token_ids)}))
    """
)


def test_second_process_reuses_a_prefix_another_session_holds(served: Served) -> None:
    client = served.client
    before = client.status()
    with client.open_session(MODEL) as holder:
        held = holder.ensure_prefix(SYSTEM)
        assert held.shared == 0
        holder.generate(suffix="\nQ: Who wrote Hamlet?\nA:", max_tokens=8)  # the holder moves on
        run = subprocess.run(
            [sys.executable, "-c", OTHER_PROCESS, str(served.root), SYSTEM, QUESTION, MODEL],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        other = json.loads(run.stdout)
    assert other["reused"] == other["shared"] == held.prefix_tokens
    assert other["prefilled"] == 0
    after = client.status()
    assert after.prefix_shares == before.prefix_shares + 1
    assert after.prefix_shared_tokens == before.prefix_shared_tokens + held.prefix_tokens
    # cold: a fresh session, alone with the model, computing the prefix itself
    with client.open_session(MODEL) as cold:
        cold_prefix = cold.ensure_prefix(SYSTEM)
        assert cold_prefix.shared == 0 and cold_prefix.prefilled == held.prefix_tokens
        assert list(cold.generate(suffix=QUESTION, max_tokens=16).token_ids) == other["tokens"]


def test_short_overlaps_are_computed_not_copied(served: Served) -> None:
    with served.client.open_session(MODEL) as a, served.client.open_session(MODEL) as b:
        a.ensure_prefix("Hello there, friend")
        result = b.ensure_prefix("Hello there, stranger")
        assert result.shared == 0 and result.reused == 0
