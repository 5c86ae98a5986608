"""Channels to a daemon: plaintext on a Unix socket or loopback, TLS where its lease says so."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc

from ._wire import channel_options

__all__ = ["ENV_TLS_CA", "TLS_CA_FILE_NAME", "find_tls_ca", "open_channel"]

#: The CA (PEM) that signed the daemon's --tls-cert, when it is not a public one.
ENV_TLS_CA = "MODELD_TLS_CA"
#: ...or in the data root, where local clients and a copied data root find it.
TLS_CA_FILE_NAME = "tls-ca.pem"


def find_tls_ca(root: Path, explicit: str | os.PathLike[str] | None) -> bytes | None:
    """PEM roots to trust: ``explicit`` > ``$MODELD_TLS_CA`` > ``<root>/tls-ca.pem`` > None
    (None: the system's roots, for a certificate from a public CA).

    :raises OSError: an explicitly named file that cannot be read."""
    if explicit:
        return Path(explicit).read_bytes()
    if named := os.environ.get(ENV_TLS_CA, ""):
        return Path(named).read_bytes()
    try:
        return (root / TLS_CA_FILE_NAME).read_bytes()
    except OSError:
        return None


def open_channel(endpoint: str, tls: bool, ca: bytes | None, *, aio: bool = False) -> Any:
    """A channel to ``endpoint``; verified TLS when ``tls`` (the certificate must name the
    endpoint's host, e.g. an IP SAN for 127.0.0.1)."""
    module: Any = grpc.aio if aio else grpc
    if not tls:
        return module.insecure_channel(endpoint, options=channel_options())
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    return module.secure_channel(endpoint, credentials, options=channel_options())
