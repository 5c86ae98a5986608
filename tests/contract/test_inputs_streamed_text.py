"""Issue 14, kind 4: streamed text across Decode calls. A session keeps the bytes of a character
split over tokens, so the text of any sequence of Decode calls joins to Detokenize of the ids."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemons import Served, stop_served
from served_models import BACKENDS, GEMMA, serve_gemma

from modeld.sessions._stop_strings import StopScanner

#: characters Gemma's vocabulary has no token for: each one is four byte tokens
GLYPHS = "𓀀𓁐𓂀𓃒"
PROMPT = f"Copy the line exactly.\n{GLYPHS} {GLYPHS} {GLYPHS}\n{GLYPHS} {GLYPHS}"


@pytest.fixture(scope="module", params=BACKENDS)
def gemma(request: pytest.FixtureRequest) -> Iterator[Served]:
    daemon = serve_gemma(request.param)
    yield daemon
    stop_served(daemon)


def test_one_token_per_call_joins_to_the_detokenized_text(gemma: Served) -> None:
    client = gemma.client
    with client.open_session(GEMMA) as session:
        session.ensure_prefix(PROMPT)
        chunks, ids = [], []
        for _ in range(16):
            out = session.generate(max_tokens=1)
            chunks.append(out.text)
            ids += out.token_ids
        whole = session.detokenize(ids)
    with client.open_session(GEMMA) as cold:  # the same tokens in one call
        cold.ensure_prefix(PROMPT)
        one_call = cold.generate(max_tokens=16)
    assert list(one_call.token_ids) == ids, gemma.backend
    joined = "".join(chunks)
    assert any(glyph in whole for glyph in GLYPHS), whole  # the case is exercised
    assert "\ufffd" not in joined
    assert whole.startswith(joined) and joined.startswith(one_call.text), (joined, whole)
    # what is not sent yet is at most the start of one character
    assert len(whole.encode()) - len(joined.encode()) < 4


def test_the_scanner_carries_split_bytes_and_stops_across_calls() -> None:
    rocket = "🚀".encode()
    first = StopScanner([])
    assert first.feed(rocket[:2]) == ("", None)
    assert first.flush() == "" and first.remainder() == rocket[:2]
    second = StopScanner([], carry=first.remainder())
    assert second.feed(rocket[2:]) == ("🚀", None)
    held = StopScanner(["END"])
    assert held.feed(b"abcE") == ("abc", None)
    assert held.remainder() == b"E"  # held for a stop string: carried if cancelled
    assert StopScanner(["END"], carry=b"E").feed(b"ND") == ("", "END")
