from __future__ import annotations

from pathlib import Path

import pytest

from modeldconn import resolve_data_root, set_data_root


def test_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("MODELD_DATA_ROOT", raising=False)
    assert resolve_data_root() == tmp_path / "home/.local/state/modeld"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_root() == tmp_path / "xdg/modeld"
    monkeypatch.setenv("MODELD_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    try:
        set_data_root(tmp_path / "process")
        assert resolve_data_root() == tmp_path / "process"
    finally:
        set_data_root(None)
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert not (tmp_path / "flag").exists()  # resolving never creates anything


def test_daemon_creates_the_root_0700(tmp_path: Path) -> None:
    from modeld.daemon._storage import prepare_data_root

    root = prepare_data_root(tmp_path / "a" / "b")
    assert root.stat().st_mode & 0o777 == 0o700
