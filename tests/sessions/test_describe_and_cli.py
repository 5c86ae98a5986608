"""Describe against llama.cpp's own reading of the file; capacity; the CLI on a live daemon."""

from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

import pytest
from daemons import Served, lease_json, run_modeld, stop_served
from served_models import start_gemma

import modeldconn

MODEL = "gemma3-270m"


def _llama_reading(path: Path) -> dict[str, object]:
    """What llama.cpp itself says about the file, having loaded it."""
    ll = pytest.importorskip("llama_cpp")
    from modeld.backends.llama._backend import weight_params

    ll.llama_backend_init()
    model = ll.llama_model_load_from_file(str(path).encode(), weight_params())
    vocab = ll.llama_model_get_vocab(model)
    buf = ctypes.create_string_buffer(256)

    def meta(key: str) -> str:
        n = ll.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else ""

    try:
        return {
            "architecture": meta("general.architecture"),
            "context_length": ll.llama_model_n_ctx_train(model),
            "layers": ll.llama_model_n_layer(model),
            "attention_heads": ll.llama_model_n_head(model),
            "kv_heads": ll.llama_model_n_head_kv(model),
            "vocab_size": ll.llama_vocab_n_tokens(vocab),
            "bos_token_id": ll.llama_vocab_bos(vocab),
            "eos": ll.llama_vocab_eos(vocab),
            "head_dim": int(meta("gemma3.attention.key_length")),
            "sliding_window": int(meta("gemma3.attention.sliding_window")),
        }
    finally:
        ll.llama_model_free(model)


def test_describe_facts_equal_the_ggufs_own(client: modeldconn.Client) -> None:
    described = client.describe(MODEL)
    facts = described.facts
    truth = _llama_reading(Path(facts.path))
    assert facts.architecture == truth["architecture"] == "gemma3"
    for field in (
        "context_length",
        "layers",
        "attention_heads",
        "kv_heads",
        "vocab_size",
        "bos_token_id",
        "head_dim",
        "sliding_window",
    ):
        assert getattr(facts, field) == truth[field], field
    assert truth["eos"] in facts.eos_token_ids
    assert facts.file_bytes == Path(facts.path).stat().st_size
    assert len(facts.digest) == 64
    # capacity: 2 (K, V) x layers x kv_heads x head_dim x 2 bytes (f16)
    capacity = described.capacity
    assert capacity.kv_bytes_per_token == 2 * 18 * 1 * 256 * 2
    assert capacity.model_max_context == 32768
    assert 0 < capacity.memory_fit_context <= capacity.model_max_context
    assert capacity.default_context == min(4096, capacity.memory_fit_context)


def test_kv_bytes_per_token_matches_the_engine(client: modeldconn.Client) -> None:
    """The state llama.cpp saves for a sequence grows by Describe's bytes per token."""
    ll = pytest.importorskip("llama_cpp")
    from modeld.backends.llama._backend import weight_params

    path = client.describe(MODEL).facts.path
    model = ll.llama_model_load_from_file(path.encode(), weight_params())
    cparams = ll.llama_context_default_params()
    cparams.n_ctx, cparams.swa_full = 512, True
    ctx = ll.llama_init_from_model(model, cparams)
    try:
        sizes = []
        for n in (16, 80):
            ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
            tokens = (ll.llama_token * n)(*([2] + [100] * (n - 1)))  # kept alive for the call
            batch = ll.llama_batch_get_one(tokens, n)
            assert ll.llama_decode(ctx, batch) == 0
            sizes.append(ll.llama_state_seq_get_size(ctx, 0))
        per_token = (sizes[1] - sizes[0]) / 64
    finally:
        ll.llama_free(ctx)
        ll.llama_model_free(model)
    # the saved state also carries a few bytes of cell metadata (position, sequence ids) per token
    assert 0 <= per_token - client.describe(MODEL).capacity.kv_bytes_per_token <= 32


def test_insufficient_memory_is_refused_with_the_arithmetic(gemma_file: Path) -> None:
    tight: Served = start_gemma(gemma_file, "--memory-limit", "400MB")
    try:
        with pytest.raises(modeldconn.InsufficientMemory) as caught:
            tight.client.open_session(MODEL, n_ctx=32768)
        meta = caught.value.metadata
        assert int(meta["required"]) == 32768 * 18432
        assert int(meta["free"]) < int(meta["required"])
        assert "32768 x 18432 B" in str(caught.value)
        fit = tight.client.describe(MODEL).capacity.memory_fit_context
        with tight.client.open_session(MODEL, n_ctx=fit) as ok:  # what fits, opens
            assert ok.info.n_ctx == fit
    finally:
        stop_served(tight)


def test_status_and_lease_name_the_loaded_model(served: Served) -> None:
    status = served.client.status()
    assert status.state == "serving" and status.backend == "llama"
    assert [m.name for m in status.models] == [MODEL]
    lease = lease_json(served.root)
    assert lease["model"]["name"] == MODEL and lease["model"]["digest"] == status.models[0].digest
    shown = run_modeld("status", "--data-root", str(served.root))
    assert shown.returncode == 0 and "serving, backend llama" in shown.stdout
    as_json = json.loads(run_modeld("status", "--json", "--data-root", str(served.root)).stdout)
    assert as_json["instanceId"] == status.instance_id


def test_cli_describe_and_generate(served: Served) -> None:
    described = run_modeld("describe", MODEL, "--json", "--data-root", str(served.root))
    assert described.returncode == 0, described.stderr
    facts = json.loads(described.stdout)
    assert facts["architecture"] == "gemma3" and facts["kv_bytes_per_token"] == 18432
    generated = run_modeld(
        "generate",
        MODEL,
        "The capital of France is",
        "--max-tokens",
        "8",
        "--data-root",
        str(served.root),
    )
    assert generated.returncode == 0, generated.stderr
    with served.client.open_session(MODEL) as session:
        session.ensure_prefix("The capital of France is")
        expected = session.generate(max_tokens=8).text
    assert generated.stdout == expected + "\n"
    assert "8 tokens, max_tokens" in generated.stderr


def test_cli_generate_json_with_a_regex_and_logprobs(served: Served) -> None:
    """`modeld generate --json` on a live daemon: one JSON object scripts can read, the text
    held to the regex, logprobs per token; a malformed regex is one typed line, exit 3."""
    date = r"(19|20)[0-9][0-9]-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])"
    root = ("--data-root", str(served.root))
    generated = run_modeld(
        "generate", MODEL, "The treaty was signed on", "--regex", date, "--logprobs", "2",
        "--max-tokens", "20", "--json", *root,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    result = json.loads(generated.stdout)
    assert result["stop_reason"] == "grammar_end"
    assert re.fullmatch(date, result["text"]), result["text"]
    assert (
        len(result["logprobs"]) == len(result["token_ids"]) == result["usage"]["completion_tokens"]
    )
    assert all(len(entry["top"]) == 2 for entry in result["logprobs"])
    bad = run_modeld("generate", MODEL, "x", "--regex", "a(b", "--json", *root)
    assert bad.returncode == 3 and bad.stdout == ""
    assert bad.stderr.startswith("modeld: invalid_argument") and bad.stderr.count("\n") >= 1


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    missing = run_modeld("describe", str(tmp_path / "none.gguf"), "--data-root", str(tmp_path))
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1
    assert "model_not_found" in missing.stderr
    nobody = run_modeld("generate", MODEL, "hi", "--data-root", str(tmp_path))
    assert nobody.returncode == 3 and "no daemon" in nobody.stderr
    assert nobody.stderr.count("\n") == 1
