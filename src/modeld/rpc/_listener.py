"""Where the daemon listens, and the socket files that go with it.

By default each daemon binds its *own* Unix socket, ``<root>/modeld-<short id>.sock`` (0600; or in
``--socket-dir``, e.g. systemd's RuntimeDirectory), so
a standby never unlinks or steals the leader's socket. The leader points the stable name
``<root>/modeld.sock`` at its own socket (an atomic symlink swap) for people and tools; clients
always dial the endpoint the lease advertises. ``--listen unix:PATH`` or ``--listen HOST:PORT``
bind exactly there instead (port 0 picks a free port; the real one is advertised).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from modeld._errors import StartupError

__all__ = ["STABLE_SOCKET_NAME", "Listener", "parse_listen"]

STABLE_SOCKET_NAME = "modeld.sock"
_INSTANCE_SOCKET_GLOB = "modeld-*.sock"
#: sun_path is 108 bytes on Linux, NUL included.
_MAX_UNIX_PATH = 107


@dataclass(frozen=True)
class Listener:
    socket_path: Path | None  #: set for Unix sockets
    host: str = ""  #: set for TCP
    port: int = 0
    per_instance: bool = False  #: the default socket: the leader publishes modeld.sock for it

    @property
    def remote(self) -> bool:
        """Reachable from other machines: TCP on a non-loopback address."""
        return self.socket_path is None and not ipaddress.ip_address(self.host).is_loopback

    @property
    def grpc_address(self) -> str:
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def endpoint(self, bound_port: int) -> str:
        """What the lease advertises: the real port, a dialable host."""
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"

    def prepare(self) -> None:
        """Before binding: refuse a socket path a live process answers on; clear a dead one."""
        if self.socket_path is None:
            return
        path = self.socket_path
        if len(os.fsencode(path)) > _MAX_UNIX_PATH:
            raise StartupError(
                f"socket path {path} is longer than {_MAX_UNIX_PATH} bytes; "
                "use a shorter --data-root or --listen unix:PATH"
            )
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise StartupError(f"{path} exists and is not a socket")
        if _answers(path):
            raise StartupError(f"socket {path} is in use by a live process")
        path.unlink()  # nobody listens: a leftover of a dead daemon

    def after_bind(self) -> None:
        if self.socket_path is not None:
            os.chmod(self.socket_path, 0o600)

    def publish_stable_name(self) -> None:
        """Leader only: point modeld.sock at our socket and clear dead instances' sockets."""
        if not self.per_instance or self.socket_path is None:
            return
        root = self.socket_path.parent
        stable = root / STABLE_SOCKET_NAME
        tmp = root / f".{STABLE_SOCKET_NAME}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.socket_path.name)
        os.replace(tmp, stable)
        for other in root.glob(_INSTANCE_SOCKET_GLOB):
            if other != self.socket_path and not _answers(other):
                other.unlink(missing_ok=True)

    def withdraw(self) -> None:
        """On exit: remove our socket, and modeld.sock if it still points at it."""
        if self.socket_path is None:
            return
        stable = self.socket_path.parent / STABLE_SOCKET_NAME
        with contextlib.suppress(OSError):
            if self.per_instance and os.readlink(stable) == self.socket_path.name:
                stable.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def parse_listen(
    spec: str | None,
    root: Path,
    short_id: str,
    *,
    authenticated: bool = False,
    tls: bool = False,
    socket_dir: Path | None = None,
) -> Listener:
    """``None`` → the per-instance socket (in ``socket_dir``, else the data root, with the stable
    ``modeld.sock`` beside it); ``unix:PATH`` → that socket; ``HOST:PORT`` → TCP.

    :raises StartupError: for a malformed spec, a TCP host that is not loopback without
        authentication, or TLS asked for on a Unix socket (its file mode already guards it).
    """
    if tls and (spec is None or spec == "" or spec.startswith("unix:")):
        raise StartupError("--tls-cert needs a TCP --listen HOST:PORT; a Unix socket is 0600")
    if spec is None or spec == "":
        return Listener((socket_dir or root) / f"modeld-{short_id}.sock", per_instance=True)
    if spec.startswith("unix:"):
        raw = spec.removeprefix("unix:")
        raw = raw.removeprefix("//") if raw.startswith("///") else raw
        return Listener(Path(raw).absolute())
    host, sep, port_text = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise StartupError(f"--listen {spec!r}: expected unix:PATH or HOST:PORT")
    if host in ("", "localhost"):
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise StartupError(f"--listen {spec!r}: HOST must be an IP address or localhost") from None
    if not address.is_loopback and not authenticated:
        raise StartupError(
            f"--listen {spec!r} is reachable from other machines: it needs --auth-token-file"
        )
    return Listener(None, host=host, port=int(port_text))
