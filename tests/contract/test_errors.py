"""Every failure a client can cause is a typed error over the real socket, and loses nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from daemons import Served, lease_json
from served_models import BACKENDS
from served_models import TINY as MODEL

import modeldconn
from modeldconn import Client, ModelRef

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


@pytest.fixture
def session(client: Client) -> Iterator[modeldconn.Session]:
    with client.open_session(MODEL) as opened:
        opened.ensure_prefix(PROMPT)
        yield opened


def _baseline(client: Client) -> tuple[int, ...]:
    with client.open_session(MODEL) as fresh:
        fresh.ensure_prefix(PROMPT)
        return fresh.generate(max_tokens=8).token_ids


def test_unknown_handle(client: Client, session: modeldconn.Session) -> None:
    instance = session.handle.rpartition("/")[0]
    ghost = modeldconn.Session(client, session.info)
    ghost.handle = f"{instance}/{'0' * 32}"
    with pytest.raises(modeldconn.SessionNotFound, match="unknown"):
        ghost.ensure_prefix("hello")
    assert session.generate(max_tokens=8).token_ids == _baseline(client)


def test_another_instances_handle_is_stale_fence(client: Client, served: object) -> None:
    with client.open_session(MODEL) as real:
        forged = modeldconn.Session(client, real.info)
        forged.handle = "another-instance/" + real.handle.rpartition("/")[2]
        with pytest.raises(modeldconn.StaleFence) as caught:
            forged.ensure_prefix("hello")
        assert caught.value.metadata["requested"] == "another-instance"


def test_closed_session(client: Client) -> None:
    opened = client.open_session(MODEL)
    assert opened.close() is True
    assert opened.close() is False  # idempotent
    with pytest.raises(modeldconn.SessionNotFound, match="closed"):
        opened.ensure_prefix("hello")


def test_wrong_backend_type(client: Client, backend: str, served: object) -> None:
    (other,) = set(BACKENDS) - {backend}
    with pytest.raises(modeldconn.BackendMismatch) as caught:
        client.open_session(ModelRef(name=MODEL, type=other))
    assert caught.value.metadata == {"requested": other, "served": backend}
    with pytest.raises(modeldconn.BackendMismatch):
        client.describe(ModelRef(name=MODEL, type=other))
    # a client learns which backend is up before it dials, from the lease alone
    root = served.root  # type: ignore[attr-defined]
    assert modeldconn.backend(data_root=root) == backend
    assert lease_json(root)["backend"] == backend  # `modeld lease show`, offline
    with client.open_session(ModelRef(name=MODEL, type=backend)) as right:
        assert right.info.facts.name == MODEL


def test_wrong_digest(client: Client) -> None:
    with pytest.raises(modeldconn.DigestMismatch):
        client.open_session(ModelRef(name=MODEL, digest="sha256:" + "ab" * 32))
    right = client.describe(MODEL).facts.digest
    with client.open_session(ModelRef(name=MODEL, digest=f"sha256:{right}")) as ok:
        assert ok.info.facts.digest == right


def test_missing_and_non_gguf_files(client: Client, served: Served) -> None:
    models = served.root / "models"  # paths must lie in the model roots (test_model_paths.py)
    with pytest.raises(modeldconn.ModelNotFound):
        client.open_session(ModelRef(path=str(models / "nope.gguf")))
    with pytest.raises(modeldconn.ModelNotFound, match="no model named"):
        client.open_session("no-such-model")
    junk = models / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    with pytest.raises(modeldconn.ModelLoadFailed, match="not a GGUF"):
        client.open_session(ModelRef(path=str(junk)))
    truncated = models / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 12)
    with pytest.raises(modeldconn.ModelLoadFailed):
        client.describe(ModelRef(path=str(truncated)))


def test_empty_input(session: modeldconn.Session) -> None:
    for empty in ("", []):
        with pytest.raises(modeldconn.InvalidArgument, match="empty"):
            session.ensure_prefix(empty)
        with pytest.raises(modeldconn.InvalidArgument, match="empty"):
            session.prefill_suffix(empty)


def test_token_ids_outside_the_vocabulary(session: modeldconn.Session) -> None:
    vocab = session.info.facts.vocab_size
    with pytest.raises(modeldconn.InvalidArgument, match="outside the vocabulary"):
        session.prefill_suffix([1, vocab])
    with pytest.raises(modeldconn.InvalidArgument, match="outside the vocabulary"):
        session.detokenize([-1])


def test_input_over_the_context_changes_nothing(client: Client) -> None:
    with client.open_session(MODEL, n_ctx=64) as small:
        assert small.info.n_ctx == 64
        small.ensure_prefix(PROMPT)
        before = small.ensure_prefix(PROMPT)
        with pytest.raises(modeldconn.ContextOverflow) as caught:
            small.ensure_prefix(PROMPT * 10)
        meta = caught.value.metadata
        assert meta["stage"] == "ensure_prefix" and meta["n_ctx"] == "64"
        assert int(meta["additional"]) > 64
        with pytest.raises(modeldconn.ContextOverflow) as caught:
            small.prefill_suffix(PROMPT * 2)
        assert caught.value.metadata["stage"] == "prefill_suffix"
        after = small.ensure_prefix(PROMPT)  # the tape survived both refusals untouched
        assert (after.reused, after.prefilled, after.dropped) == (before.prefix_tokens, 0, 0)
        out = small.generate(max_tokens=200, ignore_eos=True)
        assert out.final.stop_reason == "context_full" and out.final.available == 0


@pytest.mark.parametrize(
    "config",
    [
        {"top_p": 2.0},
        {"top_p": 0.0},
        {"min_p": -0.1},
        {"top_k": -1},
        {"temperature": float("nan")},
        {"repeat_penalty": 0.0},
        {"max_tokens": 0},
        {"stop": [""]},
        {"stop": ["x"] * 17},
    ],
)
def test_out_of_range_sampling(session: modeldconn.Session, config: dict[str, object]) -> None:
    with pytest.raises(modeldconn.InvalidArgument):
        session.generate(**config)
    assert session.generate(max_tokens=4).final.completion_tokens == 4


def test_n_ctx_over_the_trained_maximum(client: Client) -> None:
    with pytest.raises(modeldconn.InvalidArgument, match="trained context"):
        client.open_session(MODEL, n_ctx=10**6)


def test_second_concurrent_op_is_session_busy(session: modeldconn.Session) -> None:
    # long enough to outlast the daemon's short grace for a busy session, even on a tiny model
    stream = session.decode(max_tokens=1500, ignore_eos=True)
    next(stream)  # the Decode is running now
    failures: list[BaseException] = []

    def meanwhile() -> None:
        try:
            session.ensure_prefix("another prefix")
        except BaseException as exc:  # collected and asserted on below
            failures.append(exc)

    worker = threading.Thread(target=meanwhile)
    worker.start()
    worker.join(30)
    rest = list(stream)
    assert len(failures) == 1 and isinstance(failures[0], modeldconn.SessionBusy)
    assert rest[-1].final is not None and rest[-1].final.completion_tokens == 1500


def test_oversized_message_is_refused(session: modeldconn.Session) -> None:
    with pytest.raises(modeldconn.InvalidArgument, match="RESOURCE_EXHAUSTED"):
        session.ensure_prefix("x" * (17 * 1024 * 1024))
    assert session.generate(max_tokens=4).final.completion_tokens == 4


def test_calls_without_a_session_or_model_are_refused(client: Client) -> None:
    with pytest.raises(modeldconn.InvalidArgument):
        client.tokenize(ModelRef(), "hello")


def test_the_daemon_survives_all_of_it(client: Client, served: object) -> None:
    assert served.alive()  # type: ignore[attr-defined]
    with client.open_session(MODEL) as fresh:
        fresh.ensure_prefix(PROMPT)
        assert fresh.generate(max_tokens=8).token_ids == _baseline(client)
