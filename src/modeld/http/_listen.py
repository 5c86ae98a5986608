"""Where the HTTP API listens: ``--http-listen HOST:PORT``, checked like the gRPC listener.

Free of FastAPI and uvicorn, so the daemon checks the flag at start without importing them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from modeld._errors import StartupError

__all__ = ["HttpListen", "parse_http_listen"]


@dataclass(frozen=True)
class HttpListen:
    host: str
    port: int

    @property
    def remote(self) -> bool:
        return not ipaddress.ip_address(self.host).is_loopback

    def url(self, port: int, tls: bool) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if tls else 'http'}://{host}:{port}"


def parse_http_listen(spec: str, *, authenticated: bool) -> HttpListen:
    """``HOST:PORT`` (``localhost`` is 127.0.0.1; port 0: any free one).

    :raises StartupError: a malformed spec, or a non-loopback host without
        ``--auth-token-file`` (the gRPC listener's rule)."""
    host, sep, port_text = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise StartupError(f"--http-listen {spec!r}: expected HOST:PORT")
    if host in ("", "localhost"):
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise StartupError(
            f"--http-listen {spec!r}: HOST must be an IP address or localhost"
        ) from None
    if not address.is_loopback and not authenticated:
        raise StartupError(
            f"--http-listen {spec!r} is reachable from other machines: it needs --auth-token-file"
        )
    return HttpListen(host, int(port_text))
