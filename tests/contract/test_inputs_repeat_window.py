"""Issue 14, kind 7: ``repeat_last_n = -1`` is the whole context on both backends: the same
tokens as ``repeat_last_n = n_ctx``, and not those of no penalty."""

from __future__ import annotations

from served_models import TINY

from modeldconn import Client

N_CTX = 512
PROMPT = "the the the the the the the the the the the the the the the the"


def _run(client: Client, **options: object) -> tuple[int, ...]:
    with client.open_session(TINY, n_ctx=N_CTX) as session:
        session.ensure_prefix(PROMPT)
        return session.generate(max_tokens=48, ignore_eos=True, **options).token_ids


def test_minus_one_is_the_whole_context(client: Client) -> None:
    off = _run(client)
    whole = _run(client, repeat_penalty=1.5, repeat_last_n=-1)
    assert whole == _run(client, repeat_penalty=1.5, repeat_last_n=N_CTX)
    assert whole == _run(client, repeat_penalty=1.5, repeat_last_n=10 * N_CTX)
    assert whole != off  # the penalty is on
    # and it reaches further back than a short window does
    assert whole != _run(client, repeat_penalty=1.5, repeat_last_n=4)
