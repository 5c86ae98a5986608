"""The server's TLS identity (``--tls-cert`` / ``--tls-key``), read once at start-up."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from modeld._errors import StartupError

__all__ = ["TlsIdentity", "read_tls_identity"]


@dataclass(frozen=True)
class TlsIdentity:
    certificate_chain: bytes  #: PEM, leaf first
    private_key: bytes  #: PEM


def _read(option: str, path: Path) -> tuple[bytes, int]:
    try:
        return path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise StartupError(f"{option} {path}: {exc.strerror or exc}") from None


def read_tls_identity(cert: Path | None, key: Path | None) -> TlsIdentity | None:
    """None without either option.

    :raises StartupError: only one of the two given, unreadable, not PEM, or a key readable by
        group or others."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise StartupError("--tls-cert and --tls-key go together: give both or neither")
    chain, _ = _read("--tls-cert", cert)
    private, mode = _read("--tls-key", key)
    if mode & 0o077:
        raise StartupError(f"--tls-key {key} is readable by others (mode {mode:o}); chmod 600 it")
    if b"-----BEGIN CERTIFICATE-----" not in chain:
        raise StartupError(f"--tls-cert {cert} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in private:
        raise StartupError(f"--tls-key {key} holds no PEM private key")
    return TlsIdentity(chain, private)
