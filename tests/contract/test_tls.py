"""TLS for remote access: the daemon's certificate, verified by modeldconn, real tokens over it."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from daemons import Served, lease_json, run_modeld, stop_served
from served_models import TINY, serve_tiny

import modeldconn

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey]
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1; plus a stranger CA."""
    out = tmp_path_factory.mktemp("pki")
    ca_key, server_key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in "abc")
    ca = (
        _certificate("modeld test CA", ca_key, ("modeld test CA", ca_key))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    stranger = (
        _certificate("stranger CA", stranger_key, ("stranger CA", stranger_key))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(stranger_key, hashes.SHA256())
    )
    server = (
        _certificate("modeld", server_key, ("modeld test CA", ca_key))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": out / "ca.pem", "stranger": out / "stranger.pem"}
    files["cert"], files["key"] = out / "server.pem", out / "server.key"
    files["ca"].write_bytes(_pem(ca))
    files["stranger"].write_bytes(_pem(stranger))
    files["cert"].write_bytes(_pem(server))
    files["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(files["key"], 0o600)
    return files


@pytest.fixture(scope="module")
def served(pki: dict[str, Path]) -> Iterator[Served]:
    daemon = serve_tiny(
        "llama",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki["cert"]),
        "--tls-key",
        str(pki["key"]),
    )
    yield daemon
    stop_served(daemon)


def _generate(client: modeldconn.Client) -> tuple[int, ...]:
    with client.open_session(TINY) as session:
        session.ensure_prefix("The quick brown fox")
        return session.generate(max_tokens=6).token_ids


def test_clients_verify_the_certificate_and_get_real_tokens(
    served: Served, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = lease_json(served.root)
    assert lease["tls"] is True and lease["endpoint"].startswith("127.0.0.1:")
    with modeldconn.Client(data_root=served.root, tls_ca=pki["ca"]) as by_argument:
        tokens = _generate(by_argument)
    assert len(tokens) == 6
    monkeypatch.setenv("MODELD_TLS_CA", str(pki["ca"]))
    with modeldconn.Client(data_root=served.root) as by_environment:
        assert _generate(by_environment) == tokens
    monkeypatch.delenv("MODELD_TLS_CA")
    (served.root / "tls-ca.pem").write_bytes(pki["ca"].read_bytes())
    try:
        with modeldconn.Client(data_root=served.root) as by_data_root:
            assert _generate(by_data_root) == tokens
        assert modeldconn.probe(data_root=served.root, health=True).serving
    finally:
        (served.root / "tls-ca.pem").unlink()


def test_a_remote_client_dials_the_endpoint_without_the_lease(
    served: Served, pki: dict[str, Path], tmp_path: Path
) -> None:
    """What a client on another machine does: no data root of the daemon's, just its address."""
    endpoint = lease_json(served.root)["endpoint"]
    with modeldconn.Client(data_root=served.root, tls_ca=pki["ca"]) as local:
        expected = _generate(local)
    elsewhere = tmp_path / "no-lease-here"
    remote = modeldconn.Client(data_root=elsewhere, endpoint=endpoint, tls=True, tls_ca=pki["ca"])
    with remote:
        assert _generate(remote) == expected
        assert remote.status().state == "serving"
    plaintext = modeldconn.Client(data_root=elsewhere, endpoint=endpoint, wait_ready_s=0)
    with plaintext, pytest.raises(modeldconn.Unavailable):
        plaintext.status()


def test_a_certificate_from_another_ca_is_not_trusted(served: Served, pki: dict[str, Path]) -> None:
    stranger = modeldconn.Client(data_root=served.root, tls_ca=pki["stranger"], wait_ready_s=0)
    with stranger, pytest.raises(modeldconn.Unavailable):
        stranger.status()
    result = modeldconn.probe(data_root=served.root, health=True)  # system roots: untrusted
    assert result.state is modeldconn.ProbeState.UNREACHABLE and not result.serving
    plaintext = grpc.insecure_channel(lease_json(served.root)["endpoint"])
    with plaintext, pytest.raises(grpc.RpcError):
        plaintext.unary_unary("/modeld.v1.Modeld/Status")(b"", timeout=2)
    with modeldconn.Client(data_root=served.root, tls_ca=pki["ca"]) as trusted:
        assert trusted.status().state == "serving"  # nothing above hurt the daemon


def test_bad_tls_options_stop_start_up(pki: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    cases = {
        ("--listen", "127.0.0.1:0", "--tls-cert", str(pki["cert"])): "go together",
        ("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])): "needs a TCP --listen",
        ("--listen", "127.0.0.1:0", "--tls-cert", str(pki["key"]), "--tls-key", str(pki["key"])): (
            "no PEM certificate"
        ),
    }
    open_key = tmp_path / "open.key"
    open_key.write_bytes(pki["key"].read_bytes())
    os.chmod(open_key, 0o644)
    cases[
        ("--listen", "127.0.0.1:0", "--tls-cert", str(pki["cert"]), "--tls-key", str(open_key))
    ] = "chmod 600"
    for args, message in cases.items():
        out = run_modeld("serve", "--data-root", str(root), *args)
        # a flag without its partner is a usage error (settings are checked together, exit 2);
        # files that cannot serve are a start-up error (exit 3)
        assert out.returncode == (2 if message == "go together" else 3), out.stderr
        assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr
