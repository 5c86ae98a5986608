"""Loading on real daemons with real models: 8 concurrent first uses load once, LoadModel /
UnloadModel round trips bump the generation, a load timeout is typed and leaves nothing behind
(the daemon stays usable), and ``--max-loaded-models 1`` unloads the least recently used model,
whose parked session then continues with exactly the greedy tokens it would have produced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from daemons import Served, run_modeld, start_served, stop_served
from served_models import (
    GEMMA,
    GEMMA_FILE,
    GEMMA_IR_LINK,
    TINY,
    TINY_FILE,
    gemma_gguf,
    gemma_ir,
    require_backend,
)

import modeldconn
from modeldconn import LoadedModelStatus, ModelInUse, ModelLoadTimeout

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


def model_status(client: modeldconn.Client, name: str) -> LoadedModelStatus:
    return next(m for m in client.status().models if m.name == name)


def serve_two(backend: str, *args: str) -> Served:
    """tiny (loaded at start) and Gemma (not yet) on ``backend``: two genuinely different files."""
    require_backend(backend)
    if backend == "openvino":
        models = {f"{TINY}.gguf": TINY_FILE, GEMMA_IR_LINK: gemma_ir()}
        args = ("--precision", "f32", *args)
    else:
        models = {f"{TINY}.gguf": TINY_FILE, GEMMA_FILE: gemma_gguf()}
    return start_served(models, *args, model=TINY, backend=backend)


@pytest.fixture(scope="module")
def two() -> Iterator[Served]:
    served = serve_two("llama")
    yield served
    stop_served(served)


def test_eight_concurrent_first_uses_load_once(two: Served) -> None:
    client = two.client
    before = client.status().model_loads
    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(lambda _: client.open_session(GEMMA, n_ctx=256), range(8)))
    try:
        gemma = model_status(client, GEMMA)
        assert (gemma.loads, gemma.generation, gemma.weights_loaded) == (1, 1, True)
        assert gemma.last_load_s > 0
        assert client.status().model_loads == before + 1
        again = client.load_model(GEMMA)  # already in: answered at once
        assert (again.already_loaded, again.load_s, again.generation) == (True, 0.0, 1)
        # refused while its 8 sessions are live, unless asked to park them
        with pytest.raises(ModelInUse) as caught:
            client.unload_model(GEMMA)
        assert caught.value.metadata["live_sessions"] == "8"
        assert model_status(client, GEMMA).weights_loaded
        # parking its 8 live sessions first; one of them then restores and decodes
        out = client.unload_model(GEMMA, park_sessions=True)
        assert (out.unloaded, out.sessions_parked, out.generation) == (True, 8, 2)
        assert not model_status(client, GEMMA).weights_loaded
        sessions[0].ensure_prefix("Paris is")
        assert sessions[0].generate(max_tokens=2).token_ids
        gemma = model_status(client, GEMMA)
        assert (gemma.loads, gemma.generation, gemma.weights_loaded) == (2, 3, True)
    finally:
        for session in sessions:
            session.close()


def test_load_timeout_is_typed_and_leaves_nothing(two: Served) -> None:
    client = two.client
    client.unload_model(GEMMA)
    generation = model_status(client, GEMMA).generation
    with pytest.raises(ModelLoadTimeout) as caught:
        client.load_model(GEMMA, timeout_s=0.001)
    assert caught.value.metadata["name"] == GEMMA
    assert caught.value.metadata["timeout_s"] == "0.001"
    # the abandoned load has returned once a later engine job ran: nothing of it stayed
    loaded = client.load_model(GEMMA)
    assert not loaded.already_loaded and loaded.generation == generation + 1
    gemma = model_status(client, GEMMA)
    assert gemma.weights_loaded and gemma.generation == generation + 1
    with client.open_session(GEMMA, n_ctx=128) as session:
        session.ensure_prefix("The capital of France is")
        assert session.generate(max_tokens=2).token_ids


def test_cli_load_and_unload(two: Served) -> None:
    root = str(two.root)
    out = run_modeld("unload", GEMMA, "--json", "--data-root", root)
    assert out.returncode == 0, out.stderr
    gone = json.loads(out.stdout)
    assert gone["model"] == GEMMA and gone["unloaded"] is True
    out = run_modeld("load", GEMMA, "--json", "--data-root", root)
    assert out.returncode == 0, out.stderr
    came = json.loads(out.stdout)
    assert (came["already_loaded"], came["generation"]) == (False, gone["generation"] + 1)
    out = run_modeld("load", GEMMA, "--timeout", "0.001", "--data-root", root)
    assert out.returncode == 0 and "already loaded" in out.stdout, out.stderr
    out = run_modeld("load", "no-such-model", "--data-root", root)
    assert out.returncode == 3 and out.stderr.startswith("modeld: "), out.stderr


@pytest.mark.parametrize("backend", ["llama", "openvino"])
def test_lru_unload_then_the_parked_session_continues_exactly(backend: str) -> None:
    served = serve_two(backend, "--max-loaded-models", "1")
    try:
        client = served.client
        # the reference: prefix, two greedy Decodes of 8, all while tiny stays loaded
        with client.open_session(TINY, n_ctx=512) as control:
            control.ensure_prefix(PROMPT)
            first = control.generate(max_tokens=8, ignore_eos=True).token_ids
            second = control.generate(max_tokens=8, ignore_eos=True).token_ids
        session = client.open_session(TINY, n_ctx=512)
        session.ensure_prefix(PROMPT)
        assert session.generate(max_tokens=8, ignore_eos=True).token_ids == first
        with client.open_session(GEMMA, n_ctx=128) as other:  # tiny is idle: unloaded, parked
            tiny = model_status(client, TINY)
            assert (tiny.weights_loaded, tiny.generation) == (False, 2)
            assert client.status().sessions_parked >= 1
            other.ensure_prefix("Paris is")
        # tiny loads again (Gemma, idle now, goes) and the parked session restores exactly
        assert session.generate(max_tokens=8, ignore_eos=True).token_ids == second
        tiny, gemma = model_status(client, TINY), model_status(client, GEMMA)
        assert (tiny.weights_loaded, tiny.loads, tiny.generation) == (True, 2, 3)
        assert (gemma.weights_loaded, gemma.generation) == (False, 2)
        session.close()
    finally:
        stop_served(served)
