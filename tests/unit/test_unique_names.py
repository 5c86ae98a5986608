"""Test modules have unique file names: pytest imports them by basename (no packages), so a
second ``test_x.py`` anywhere makes collection of the whole suite fail."""

from __future__ import annotations

import collections
from pathlib import Path


def test_test_module_names_are_unique() -> None:
    names = collections.Counter(p.name for p in Path(__file__).parents[1].rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
