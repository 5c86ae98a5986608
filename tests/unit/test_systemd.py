from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parent.parent.parent / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_system_unit_verifies(tmp_path: Path) -> None:
    modeld = Path(sys.executable).with_name("modeld")
    unit = (UNITS / "modeld.service").read_text().replace("/usr/local/bin/modeld", str(modeld))
    (tmp_path / "modeld.service").write_text(unit)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "modeld.service")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "modeld.service" not in out.stderr  # no warnings about our unit


def test_units_run_modeld_serve_with_restart_on_failure() -> None:
    for unit in (UNITS / "modeld.service", UNITS / "user" / "modeld.service"):
        text = unit.read_text()
        assert "modeld serve --backend llama --data-root" in text
        assert "Restart=on-failure" in text and "StateDirectory=modeld" in text
        assert "Type=notify" in text and "WatchdogSec=" in text


def test_units_put_the_socket_in_their_runtime_directory() -> None:
    for unit in (UNITS / "modeld.service", UNITS / "user" / "modeld.service"):
        text = unit.read_text()
        assert "RuntimeDirectory=modeld" in text and "RuntimeDirectoryMode=0700" in text
        assert "--socket-dir %t/modeld" in text
