"""Concurrent requests of one conversation fork instead of waiting: while a long streamed turn
holds the conversation's session (``x-session-id``), a second request of the same conversation
is served at once, on a new session started from a KV copy of the busy one (the whole shared
prompt reused, nothing recomputed), and the long turn goes on untouched."""

from __future__ import annotations

import time
from typing import Any

from daemons import Served
from http_clients import openai_client
from served_models import TINY

SYSTEM = "You are a careful assistant. " * 12
#: long enough that the stream is still decoding when the second request is answered (the
#: tiny fixture decodes ~500 tokens/s on one loaded core: seconds, against ~50 ms for the fork)
LONG_TURN = 1500


def test_concurrent_request_of_one_conversation_forks(tiny: Served) -> None:
    headers = {"x-session-id": "forked-conversation"}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "hello"},
    ]
    with openai_client(tiny) as client:
        warm = client.chat.completions.create(
            model=TINY,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=4,
            temperature=0,
            extra_headers=headers,
        )
        messages += [
            {"role": "assistant", "content": warm.choices[0].message.content},
            {"role": "user", "content": "and again"},
        ]
        stream = client.chat.completions.create(
            model=TINY,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=LONG_TURN,
            temperature=0,
            stream=True,
            extra_headers=headers,
        )
        chunks = iter(stream)
        next(chunks)  # the long turn has started: its session is in use
        began = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model=TINY,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=4,
            temperature=0,
            extra_headers=headers,
        )
        took = time.monotonic() - began
        forked = raw.parse()
        rest = list(chunks)
    extra = forked.model_extra["modeld"]
    assert forked.usage is not None
    prompt = forked.usage.prompt_tokens
    # the name was bound to a session in use: served on a new one (a name whose session is
    # idle binds it: "x-session-id")
    assert extra["binding"] == "new"
    # the fork: the whole prompt copied from the busy session's KV (it holds it all), none
    # of it prefilled again
    assert extra["shared_tokens"] == extra["reused_tokens"] == prompt
    assert raw.headers["x-modeld-reused-tokens"] == str(prompt)
    assert forked.usage.prompt_tokens_details is not None
    assert forked.usage.prompt_tokens_details.cached_tokens == prompt
    finishes = [c.choices[0].finish_reason for c in rest if c.choices]
    assert finishes[-1] == "length", "the long turn ran to its budget, not cut by the fork"
    generated = sum(1 for c in rest if c.choices and c.choices[0].delta.content)
    assert generated > LONG_TURN // 2
    assert took < 5.0, f"the second request waited {took:.1f} s"
