"""modeldconn follows the lease to a new leader; sessions of the old one fail typed."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from daemons import DaemonPool, Served, stop_served, wait_for
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from served_models import GEMMA as MODEL
from served_models import start_gemma

import modeldconn


@contextlib.contextmanager
def leader_and_standby(gemma_file: Path) -> Iterator[Served]:
    """A serving leader (yielded) and a standby waiting on the same data root."""
    first: Served = start_gemma(gemma_file)
    standby = DaemonPool(first.root)
    try:
        standby.start("--model", MODEL, ttl_s=15)
        wait_for("the standby", lambda: "standing by" in standby.started[0].log(), 20)
        yield first
    finally:
        standby.kill_all()
        stop_served(first)


def test_client_redials_after_a_takeover(gemma_file: Path) -> None:
    with leader_and_standby(gemma_file) as first:
        client = modeldconn.Client(data_root=first.root)
        old = client.open_session(MODEL)
        old.ensure_prefix("Hello there")
        old_instance = client.status().instance_id

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        wait_for("the standby to serve", lambda: modeldconn.available(data_root=first.root), 30)

        assert client.status().instance_id != old_instance  # redialled through the new lease
        with client.open_session(MODEL) as fresh:
            fresh.ensure_prefix("Hello there")
            assert fresh.generate(max_tokens=4).final.completion_tokens == 4
        with pytest.raises((modeldconn.Unavailable, modeldconn.StaleFence)):
            old.ensure_prefix("Hello there")
        client.close()


def test_server_reflection_lists_the_services(served: Served) -> None:
    lease = modeldconn.probe(data_root=served.root).lease
    assert lease is not None
    with grpc.insecure_channel(lease.endpoint) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"modeld.v1.Modeld", "grpc.health.v1.Health"} <= names


def test_a_call_while_the_daemon_starts_waits_for_it(gemma_file: Path) -> None:
    import shutil
    import subprocess
    import tempfile

    from daemons import modeld_command

    root = Path(tempfile.mkdtemp(prefix="mds-"))
    (root / "models").mkdir()
    (root / "models" / "gemma-3-270m-q4_k_m.gguf").symlink_to(gemma_file)
    proc = subprocess.Popen(
        modeld_command("serve", "--data-root", str(root), "--model", MODEL),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def starting() -> bool:
            lease = modeldconn.probe(data_root=root).lease
            return lease is not None and lease.state == "starting"

        wait_for("the lease to say starting", starting, 30, step_s=0.005)
        assert not modeldconn.available(data_root=root)
        with modeldconn.Client(data_root=root) as client, client.open_session(MODEL) as session:
            assert session.ensure_prefix("Hello").prefix_tokens > 0
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def test_leader_killed_mid_decode_typed_error_then_the_new_leader(gemma_file: Path) -> None:
    import time

    with leader_and_standby(gemma_file) as first:
        client = modeldconn.Client(data_root=first.root)
        session = client.open_session(MODEL)
        session.ensure_prefix("A very long story begins here:")
        stream = session.decode(max_tokens=100000, ignore_eos=True)
        next(stream)
        killed_at = time.monotonic()
        first.proc.send_signal(signal.SIGKILL)
        with pytest.raises(modeldconn.Unavailable):
            for _ in stream:
                pass
        first.proc.wait(10)
        wait_for("the standby to serve", lambda: modeldconn.available(data_root=first.root), 10)
        took = time.monotonic() - killed_at
        with client.open_session(MODEL) as fresh:  # redialled through the new lease
            fresh.ensure_prefix("A very long story begins here:")
            assert fresh.generate(max_tokens=4).final.completion_tokens == 4
        assert took < 2.0 + 5.0  # serving within 2 s of the kill, plus loading the model here
        client.close()
