"""Moving KV between sessions of different context sizes, on the engines themselves (issue 22).

``EngineSession.adopt_prefix`` copies only the tokens a receiver needs and can hold; a receiver
that cannot get them is empty and usable, never lost. ``load_state`` refuses a state that does
not fit with a typed error and leaves the session usable. Every test compares the receiver's
greedy continuation with a cold session's of the same n_ctx, bit for bit where the engine
promises it. The tiny qwen2 GGUF is loaded with the backend classes directly (no daemon).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from served_models import BACKENDS, TINY_FILE, cache_dir, require_backend

from modeld.backends import make_backend
from modeld.backends._base import EngineModel, EngineSession, EngineState, SamplingParams
from modeld.models._facts import ModelSpec, facts_from_gguf
from modeldconn._errors import InvalidArgument, SnapshotMismatch

#: the reproduction's tapes: A holds 890 tokens at n_ctx 2048, B wants 20 of them at n_ctx 256
LONG = list(range(10, 500)) + [450] * 400
GREEDY = SamplingParams(
    temperature=0.0,
    top_k=40,
    top_p=1.0,
    min_p=0.0,
    repeat_penalty=1.0,
    repeat_last_n=0,
    seed=None,
    ignore_eos=True,
)


@pytest.fixture(scope="module", params=BACKENDS)
def model(request: pytest.FixtureRequest) -> Iterator[EngineModel]:
    name: str = request.param
    require_backend(name)
    digest = hashlib.sha256(TINY_FILE.read_bytes()).hexdigest()
    facts = facts_from_gguf(TINY_FILE, name="tiny", digest=digest)
    # f32 on openvino, as the contract suite serves it: batched and solo rows are then exact
    backend = make_backend(
        name,
        n_threads=2,
        cache_dir=cache_dir() / "unit-engines",
        precision="f32" if name == "openvino" else "",
    )
    engine = backend.load(ModelSpec(facts))
    yield engine
    engine.close()


def _greedy(model: EngineModel, session: EngineSession, tape: Sequence[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``tape`` (resident but for, at most, its last token)."""
    if not session.logits_current():  # what the session layer does: recompute the last token
        session.truncate(len(tape) - 1)
        session.prefill(tape[len(tape) - 1 :])
    history = list(tape)
    out: list[int] = []
    for _ in range(n):
        sampler = session.sampler(GREEDY, history)
        token = sampler.sample()
        sampler.close()
        out.append(token)
        history.append(token)
        model.decode_batch([(session, token)])
    return out


def _cold(model: EngineModel, n_ctx: int, prompt: Sequence[int], n: int) -> list[int]:
    session = model.open_session(n_ctx)
    try:
        session.prefill(prompt)
        return _greedy(model, session, prompt, n)
    finally:
        session.close()


def _donor(model: EngineModel, n_ctx: int, tape: Sequence[int]) -> EngineSession:
    session = model.open_session(n_ctx)
    session.prefill(tape)
    return session


@pytest.mark.parametrize(
    ("donor_ctx", "donor_tape", "receiver_ctx", "keep"),
    [
        (2048, LONG, 256, 20),  # the reproduction: 890 donor tokens, a 256-token receiver
        (2048, LONG, 256, 200),  # more than a block, less than the receiver's room
        (256, LONG[:200], 2048, 150),  # a receiver larger than the donor
        (512, LONG[:300], 512, 300),  # same size (on llama: a lane of the same n_ctx)
    ],
)
def test_receiver_continues_like_a_cold_session(
    model: EngineModel, donor_ctx: int, donor_tape: list[int], receiver_ctx: int, keep: int
) -> None:
    prompt = [*donor_tape[:keep], 7, 8, 9]
    donor = _donor(model, donor_ctx, donor_tape)
    receiver = model.open_session(receiver_ctx)
    try:
        assert receiver.adopt_prefix(donor, keep)
        assert receiver.kv_len == keep and not receiver.logits_current()
        receiver.prefill(prompt[keep:])
        shared = _greedy(model, receiver, prompt, 12)
        # the donor is untouched: it continues its own tape as before
        assert donor.kv_len == len(donor_tape)
    finally:
        receiver.close()
        donor.close()
    assert shared == _cold(model, receiver_ctx, prompt, 12)


def test_from_a_saved_state_too_big_to_load_whole(model: EngineModel) -> None:
    """A parked donor: its saved state holds 890 tokens; the receiver holds 256."""
    donor = _donor(model, 2048, LONG)
    state = donor.save_state()
    donor.close()
    receiver = model.open_session(256)
    try:
        assert receiver.adopt_prefix(state, 40)
        assert receiver.kv_len == 40
        shared = _greedy(model, receiver, LONG[:40], 10)
    finally:
        receiver.close()
    assert shared == _cold(model, 256, LONG[:40], 10)


def test_whole_state_adopted_when_it_fits(model: EngineModel) -> None:
    donor = _donor(model, 1024, LONG[:100])
    state = donor.save_state()
    donor.close()
    receiver = model.open_session(128)
    try:
        assert receiver.adopt_prefix(state, 100)
        shared = _greedy(model, receiver, LONG[:100], 8)
    finally:
        receiver.close()
    assert shared == _cold(model, 128, LONG[:100], 8)


@pytest.mark.parametrize(
    "case", ["keep past the receiver", "keep past the donor", "foreign state", "empty state"]
)
def test_a_failed_copy_leaves_the_receiver_empty_and_usable(model: EngineModel, case: str) -> None:
    donor = _donor(model, 512, LONG[:300])
    receiver = model.open_session(256)
    receiver.prefill([1, 2, 3])  # whatever it held before is gone either way
    source: EngineSession | EngineState
    source, keep = donor, 300
    if case == "keep past the donor":
        keep = 301
    elif case == "foreign state":
        source, keep = EngineState(b"not a state" * 100, 100, None), 50
    elif case == "empty state":
        source, keep = EngineState(b"", 0, None), 10
    try:
        assert receiver.adopt_prefix(source, keep) is False
        assert receiver.kv_len == 0 and not receiver.logits_current()
        receiver.prefill(LONG[:30])
        computed = _greedy(model, receiver, LONG[:30], 6)
    finally:
        receiver.close()
        donor.close()
    assert computed == _cold(model, 256, LONG[:30], 6)


def test_keep_zero_and_self(model: EngineModel) -> None:
    session = _donor(model, 256, LONG[:50])
    try:
        assert session.adopt_prefix(session, 20)
        assert session.kv_len == 20 and not session.logits_current()
        assert session.adopt_prefix(session, 0) and session.kv_len == 0
        with pytest.raises(ValueError):
            session.adopt_prefix(session, -1)
    finally:
        session.close()


def test_snapshot_restored_with_a_smaller_n_ctx_continues_identically(
    model: EngineModel,
) -> None:
    """Saved at n_ctx 2048 with 500 tokens, restored at n_ctx 1024: the saved logits and the
    tokens after them are the original session's."""
    tape = LONG[:500]
    original = _donor(model, 2048, tape)
    state = original.save_state()
    try:
        expected = _greedy(model, original, tape, 10)
    finally:
        original.close()
    restored = model.open_session(1024)
    try:
        restored.load_state(state)
        assert restored.kv_len == 500 and restored.logits_current()
        assert _greedy(model, restored, tape, 10) == expected
    finally:
        restored.close()


def test_a_state_that_does_not_fit_is_a_typed_error_and_the_session_lives(
    model: EngineModel,
) -> None:
    big = _donor(model, 2048, LONG)
    state = big.save_state()
    big.close()
    session = model.open_session(256)
    try:
        session.prefill([1, 2, 3])
        with pytest.raises(InvalidArgument) as refused:
            session.load_state(state)
        assert refused.value.metadata["kv_len"] == str(len(LONG))
        assert refused.value.metadata["n_ctx"] == "256"
        assert session.kv_len == 0
        with pytest.raises(SnapshotMismatch):
            session.load_state(EngineState(b"garbage" * 64, 40, None))
        assert session.kv_len == 0 and not session.logits_current()
        session.prefill(LONG[:30])
        computed = _greedy(model, session, LONG[:30], 6)
    finally:
        session.close()
    assert computed == _cold(model, 256, LONG[:30], 6)


def test_saved_logits_survive_a_restore_into_a_bigger_session(model: EngineModel) -> None:
    """Parking restores into a lane of its own n_ctx; a state from a small session also loads
    into a bigger one, logits included."""
    small = _donor(model, 128, LONG[:100])
    state = small.save_state()
    small.close()
    bigger = model.open_session(1024)
    try:
        bigger.load_state(state)
        assert bigger.logits_current()
        assert state.logits is not None
        got = _greedy(model, bigger, LONG[:100], 6)
    finally:
        bigger.close()
    assert got == _cold(model, 128, LONG[:100], 6)
    assert np.frombuffer(state.logits, np.float32).shape == (model.facts.vocab_size,)
