"""The public surface, the error table, and the client's import boundary."""

from __future__ import annotations

import ast
import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import modeld
import modeldconn
from modeldconn import _errors


@pytest.mark.parametrize("package", [modeld, modeldconn])
def test_exported_members(package: object) -> None:
    public = {name for name in dir(package) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(package, name)).__name__ == "module"}
    assert set(package.__all__) == public - modules  # type: ignore[attr-defined]


def test_every_reason_round_trips_through_a_status() -> None:
    table = _errors.reason_table()
    named = {
        "stale_fence",
        "session_not_found",
        "session_busy",
        "session_fatal",
        "context_overflow",
        "insufficient_memory",
        "backend_mismatch",
        "digest_mismatch",
        "model_not_found",
        "model_load_failed",
        "model_path_forbidden",
        "invalid_argument",
        "overloaded",
        "unsupported_feature",
        "not_ready",
        "draining",
        "snapshot_mismatch",
        "unauthenticated",
    }
    assert named <= set(table)
    for reason, cls in table.items():
        error = cls("something happened", n_ctx=42)
        status = error.to_status()
        assert status.code == cls.grpc_code.value[0]
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is cls and again.metadata == {"n_ctx": "42"}
        assert str(again) == f"{reason}: something happened"


def test_transport_failures_map_to_typed_errors() -> None:
    with grpc.insecure_channel("unix:///nonexistent/modeld.sock") as channel:
        call = channel.unary_unary("/modeld.v1.Modeld/Status")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=0.5)
    error = _errors.error_from_rpc(caught.value)
    assert isinstance(error, modeldconn.Unavailable)
    assert error.__cause__ is caught.value


def test_client_imports_neither_the_daemon_nor_an_engine() -> None:
    code = (
        "import sys, modeldconn; modeldconn.available(); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('modeld', 'llama_cpp', 'openvino', 'openvino_genai')]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _modeldconn_modules_the_daemon_imports() -> set[str]:
    found = set()
    for path in (Path(modeld.__file__).parent).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                parts = name.split(".")
                if parts[0] == "modeldconn" and len(parts) > 1:
                    found.add(".".join(parts[:2]))
    return found


def test_modules_shared_with_the_daemon_say_so() -> None:
    shared = _modeldconn_modules_the_daemon_imports()
    assert "modeldconn._errors" in shared  # the scan sees the daemon's imports
    for name in sorted(shared - {"modeldconn._pb"}):  # _pb: generated, see gen_proto.py
        doc = importlib.import_module(name).__doc__ or ""
        assert doc.startswith("Shared with the daemon:"), name
