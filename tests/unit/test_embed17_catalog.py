"""ModelCatalog keeps the facts it read per file version: resolving a model again reads no
header (an Embed of a short text is ~10 ms; reading MiniLM's header was ~18 ms of it), and a
file replaced under the same name is read afresh."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from modeld.models import _catalog
from modeld.models._catalog import ModelCatalog

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_facts_are_read_once_per_file_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "m.gguf"
    shutil.copy(FIXTURES / "tiny-qwen2.gguf", target)
    catalog = ModelCatalog(tmp_path, "llama")
    reads: list[Path] = []
    original = _catalog.facts_from_gguf

    def counting(path: Path, **kwargs: str) -> object:
        reads.append(path)
        return original(path, **kwargs)

    monkeypatch.setattr(_catalog, "facts_from_gguf", counting)
    first = catalog.resolve("m", "", "", "")
    again = catalog.resolve("m", "", "", "")
    assert again.facts is first.facts and len(reads) == 1
    assert "generate" in first.facts.tasks

    # another model under the same name (another size and mtime): read afresh
    shutil.copy(FIXTURES / "tiny-bert-reranker.gguf", target)
    os.utime(target, ns=(1, 1))
    replaced = catalog.resolve("m", "", "", "")
    assert len(reads) == 2
    assert replaced.facts.digest != first.facts.digest
    assert replaced.facts.tasks == ("rerank",)
