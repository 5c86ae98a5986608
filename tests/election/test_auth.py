"""Authenticated remote access: a non-loopback listener needs a token; calls without it fail."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from daemons import DaemonPool, lease_json, run_modeld
from grpc_health.v1 import health_pb2, health_pb2_grpc

import modeldconn

TOKEN = "s3cret-token-for-tests-0123456789"


def _token_file(root: Path, mode: int = 0o600) -> Path:
    path = root.parent / f"{root.name}.token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, mode)
    return path


def test_non_loopback_listener_needs_a_token(data_root: Path) -> None:
    out = run_modeld("serve", "--data-root", str(data_root), "--listen", "0.0.0.0:0")
    assert out.returncode == 3 and out.stderr.count("\n") == 1
    assert "needs --auth-token-file" in out.stderr


def test_token_file_readable_by_others_is_refused(data_root: Path) -> None:
    token = _token_file(data_root, 0o644)
    out = run_modeld("serve", "--data-root", str(data_root), "--auth-token-file", str(token))
    assert out.returncode == 3 and "chmod 600" in out.stderr
    token.unlink()


def test_calls_without_the_token_are_unauthenticated(daemons: DaemonPool) -> None:
    token = _token_file(daemons.root)
    try:
        daemons.start("--listen", "0.0.0.0:0", "--auth-token-file", str(token))
        daemons.wait_leader()
        lease = lease_json(daemons.root)
        assert lease["auth"] is True and lease["endpoint"].startswith("127.0.0.1:")
        assert TOKEN not in (daemons.root / "modeld.lease").read_text()  # nothing secret there
        with pytest.raises(modeldconn.Unauthenticated, match="wants an authorization token"):
            modeldconn.Client(data_root=daemons.root, wait_ready_s=0).status()
        with pytest.raises(modeldconn.Unauthenticated, match="not valid"):
            modeldconn.Client(data_root=daemons.root, auth_token="wrong" * 8).status()
        with modeldconn.Client(data_root=daemons.root, auth_token=TOKEN) as client:
            assert client.status().state == "serving"
        # local clients find it in the data root; health stays open to anyone
        (daemons.root / "auth.token").write_text(TOKEN)
        os.chmod(daemons.root / "auth.token", 0o600)
        assert modeldconn.Client(data_root=daemons.root).status().state == "serving"
        assert modeldconn.probe(data_root=daemons.root, health=True).serving
        with grpc.insecure_channel(lease["endpoint"]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        token.unlink(missing_ok=True)
