"""KV cache types in the session layer, on the fake engine: which type a session gets, the
refusals, admission's arithmetic, donors of one type only, and snapshot fingerprints."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_engine import fake_spec
from session_harness import Harness

from modeld.backends._base import EngineState
from modeld.models._aliases import Alias
from modeld.models._capacity import capacity_of
from modeld.models._facts import ModelSpec
from modeld.sessions._prefix_index import BLOCK, PrefixIndex
from modeld.sessions._snapshots import Snapshot, SnapshotStore, runtime_fingerprint
from modeld.sessions._types import TokenInput
from modeldconn._errors import InvalidArgument, SnapshotMismatch, UnsupportedFeature

SPEC = fake_spec()


def _aliased(kv_cache_type: str) -> ModelSpec:
    return ModelSpec(SPEC.facts, Alias(name="fast", model="fake", kv_cache_type=kv_cache_type))


async def test_the_request_then_the_alias_then_f16(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    plain, resolved = await h.manager.open(SPEC, 256)
    assert plain.kv_cache_type == resolved.kv_cache_type == "f16"
    asked, resolved = await h.manager.open(SPEC, 256, kv_cache_type="q8_0")
    assert asked.kv_cache_type == resolved.kv_cache_type == "q8_0"
    assert asked.engine is not None and asked.engine.kv_cache_type == "q8_0"  # type: ignore[attr-defined]
    by_alias, _ = await h.manager.open(_aliased("q4_0"), 256)
    assert by_alias.kv_cache_type == "q4_0"
    overridden, _ = await h.manager.open(_aliased("q4_0"), 256, kv_cache_type="f16")
    assert overridden.kv_cache_type == "f16"
    # its KV is charged at its type: q8_0 is 34 bytes a 32-element block
    assert asked.kv_bytes == 256 * SPEC.facts.kv_bytes_per_token_at("q8_0") < plain.kv_bytes


async def test_refusals_leave_nothing_open(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    with pytest.raises(InvalidArgument) as unknown:
        await h.manager.open(SPEC, 256, kv_cache_type="Q8_0")
    assert unknown.value.metadata["field"] == "kv_cache_type"
    with pytest.raises(InvalidArgument, match="alias fast's"):
        await h.manager.open(_aliased("q2_k"), 256)
    h.backend.kv_cache_types = ("f16",)  # type: ignore[attr-defined]
    with pytest.raises(UnsupportedFeature, match="fake backend caches KV as f16 only"):
        await h.manager.open(SPEC, 256, kv_cache_type="q4_0")
    assert h.manager.session_count() == 0 and h.backend.models == []  # nothing loaded


async def test_a_donor_of_another_type_is_never_offered(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    head = list(range(10, 10 + 6 * BLOCK))
    f16, _ = await h.manager.open(SPEC, 1024)
    await h.manager.ensure_prefix(f16.handle, TokenInput(tuple(head)))  # the longest holder
    q8, _ = await h.manager.open(SPEC, 1024, kv_cache_type="q8_0")
    r = await h.manager.ensure_prefix(q8.handle, TokenInput(tuple(head[: 4 * BLOCK])))
    assert r.shared == 0 and r.prefilled == 4 * BLOCK
    other, _ = await h.manager.open(SPEC, 1024, kv_cache_type="q8_0")
    r = await h.manager.ensure_prefix(other.handle, TokenInput(tuple(head)))
    assert r.shared == 4 * BLOCK  # from the q8_0 session, though the f16 one holds more


def test_the_index_looks_past_holders_it_does_not_accept() -> None:
    index: PrefixIndex[str] = PrefixIndex()
    tokens = list(range(10 * BLOCK))
    index.update("long", tokens)
    index.update("short", tokens[: 3 * BLOCK])
    assert index.longest(tokens) == (10 * BLOCK, ["long"])
    assert index.longest(tokens, accept=lambda h: h == "short") == (3 * BLOCK, ["short"])
    assert index.longest(tokens, "short", accept=lambda h: h == "short") == (0, [])


def test_capacity_counts_the_type() -> None:
    facts = dataclasses.replace(SPEC.facts, layers=4, kv_heads=2, head_dim=64, value_dim=64)
    free = 1000 * 2048  # 1,000 tokens of f16 KV
    f16 = capacity_of(facts, free, weights_resident=True)
    q4 = capacity_of(facts, free, weights_resident=True, kv_cache_type="q4_0")
    assert f16.kv_bytes_per_token == 4 * 2 * 128 * 2 == 2048
    assert q4.kv_bytes_per_token == 4 * 2 * 128 * 18 // 32 == 576
    assert (f16.memory_fit_context, q4.memory_fit_context) == (1000, free // 576)


def test_a_snapshot_loads_only_into_its_own_type(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, 1 << 30)
    backend = {"backend": "fake", "engine": "1"}
    snapshot = Snapshot(
        id=SnapshotStore.new_id(),
        state=EngineState(b"kv", 2, None),
        model_digest="d",
        model_path="/m",
        fingerprint=runtime_fingerprint(backend, "q8_0"),
        tape=[1, 2],
        prefix_len=2,
        n_ctx=16,
    )
    store.save(snapshot)
    assert store.recorded_kv_cache_type(snapshot.id) == "q8_0"
    with pytest.raises(SnapshotMismatch, match="holds a q8_0 KV cache") as refused:
        store.load(snapshot.id, model_digest="d", fingerprint=runtime_fingerprint(backend, "f16"))
    assert refused.value.metadata["snapshot_kv_cache_type"] == "q8_0"
    loaded = store.load(
        snapshot.id, model_digest="d", fingerprint=runtime_fingerprint(backend, "q8_0")
    )
    assert loaded.tape == [1, 2]
    # taken before KV types were recorded: an f16 one, and it still restores as such
    legacy = dataclasses.replace(snapshot, id=SnapshotStore.new_id(), fingerprint=backend)
    store.save(legacy)
    assert store.recorded_kv_cache_type(legacy.id) == "f16"
    store.load(legacy.id, model_digest="d", fingerprint=runtime_fingerprint(backend, "f16"))
