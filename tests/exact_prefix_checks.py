"""Warm equals cold with ``exact_prefix`` (issue 21), written once for every model and backend.

A *cold* run is a fresh session given the whole prompt in one EnsurePrefix, closed before the
warm sessions start (so no warm session can copy its KV, and no cold one a warm one's). A *warm*
turn reaches the same prompt from a session that already holds part of it, with generated tokens
on its tape, through a suffix on Decode. Both decode greedily and seeded; the ids must be equal.
"""

from __future__ import annotations

from collections.abc import Iterable

import modeldconn

OUT = 6  #: tokens decoded per comparison
MODES = ("greedy", "seeded")


def options(mode: str) -> dict[str, object]:
    if mode == "greedy":
        return {"max_tokens": OUT, "ignore_eos": True}
    return {"max_tokens": OUT, "ignore_eos": True, "temperature": 0.9, "seed": 1234, "top_k": 0}


def document(client: modeldconn.Client, model: str, tokens: int) -> list[int]:
    """``tokens`` ids of varied prose, BOS first."""
    text = "".join(
        f"Entry {i}: the {w} archive kept {i * 7} letters about the {v} river and its mills.\n"
        for i, (w, v) in enumerate(
            zip(["old", "new", "north", "east"] * 200, ["slow", "wide"] * 400, strict=True)
        )
    )
    ids = client.tokenize(model, text, add_special=True)
    assert len(ids) >= tokens
    return ids[:tokens]


def cold(client: modeldconn.Client, model: str, prompt: list[int], mode: str) -> tuple[int, ...]:
    with client.open_session(model, exact_prefix=True) as session:
        result = session.ensure_prefix(prompt)
        assert result.reused == 0 and result.shared == 0
        return session.generate(**options(mode)).token_ids  # type: ignore[arg-type]


def prefix_lengths(chunk: int) -> tuple[int, ...]:
    return (chunk - 1, chunk, chunk + 1, 5 * chunk + 7)


def suffix_lengths(chunk: int) -> tuple[int, ...]:
    return (1, chunk - 1, 3 * chunk)


def check_warm_equals_cold(
    client: modeldconn.Client, model: str, prefixes: tuple[int, ...] | None = None
) -> None:
    """Prefix lengths C-1, C, C+1, 5C+7 (``prefixes``: indices into those four; None: all)
    and suffix lengths 1, C-1, 3C, greedy and seeded."""
    probe = client.open_session(model, exact_prefix=True)
    chunk = probe.info.prefix_chunk
    assert probe.info.exact_prefix and chunk > 1
    probe.close()
    doc = document(client, model, 8 * chunk + 8)
    lengths = prefix_lengths(chunk)
    chosen = [lengths[i] for i in prefixes] if prefixes is not None else list(lengths)
    for p in chosen:
        expected = {
            (s, mode): cold(client, model, doc[: p + s], mode)
            for s in suffix_lengths(chunk)
            for mode in MODES
        }
        with client.open_session(model, exact_prefix=True) as warm:
            warm.ensure_prefix(doc[:p])
            warm.generate(max_tokens=3, ignore_eos=True)  # generated tokens on the tape
            for s in suffix_lengths(chunk):
                for mode in MODES:
                    again = warm.ensure_prefix(doc[:p])
                    # whole chunks only, or the prompt's own last chunk computed at its length
                    assert again.reused in (p, p - p % chunk), (p, again)
                    got = warm.generate(suffix=doc[p : p + s], **options(mode))  # type: ignore[arg-type]
                    assert got.token_ids == expected[(s, mode)], (p, s, mode)


def check_chat(client: modeldconn.Client, model: str, turns: int = 5) -> None:
    """Every turn of a chat equals a fresh session fed the whole history as one prompt. The
    cold runs come after the chat session is closed, so none of them can copy its KV."""
    doc = document(client, model, 600)
    history = doc[:150]
    turns_seen: list[tuple[list[int], tuple[int, ...]]] = []
    with client.open_session(model, exact_prefix=True) as warm:
        for turn in range(turns):
            history = history + doc[150 + 60 * turn : 150 + 60 * turn + 37 + 5 * turn]
            warm.ensure_prefix(history)
            got = warm.generate(**options("greedy")).token_ids  # type: ignore[arg-type]
            turns_seen.append((history, got))
            history = history + list(got)
    for turn, (prompt, got) in enumerate(turns_seen):
        assert got == cold(client, model, prompt, "greedy"), turn


def check_kept_through(
    client: modeldconn.Client, model: str, chunk: int, parked: Iterable[str] = ()
) -> None:
    """Shared prefixes and snapshots keep the guarantee."""
    doc = document(client, model, 8 * chunk + 8)
    p, s = 5 * chunk + 7, chunk - 1
    want = cold(client, model, doc[: p + s], "greedy")
    with client.open_session(model, exact_prefix=True) as donor:
        donor.ensure_prefix(doc[:p])
        donor.generate(max_tokens=3, ignore_eos=True)
        with client.open_session(model, exact_prefix=True) as receiver:
            shared = receiver.ensure_prefix(doc[: p + s])
            assert shared.shared == p - p % chunk, shared
            assert receiver.generate(max_tokens=OUT, ignore_eos=True).token_ids == want
        snap = donor.snapshot()
        with client.restore(snap.snapshot_id, exact_prefix=True) as restored:
            restored.ensure_prefix(doc[:p])
            got = restored.generate(suffix=doc[p : p + s], max_tokens=OUT, ignore_eos=True)
            assert got.token_ids == want
