"""systemd's notify protocol (sd_notify): READY when serving, WATCHDOG while renewing, STOPPING.

A datagram to ``$NOTIFY_SOCKET``; a no-op when systemd did not ask (the variable is unset).
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "pet_watchdog", "watchdog_interval_s"]

_last_pet = 0.0


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields; True when a notify socket took them."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        return True
    except OSError:
        return False


def pet_watchdog() -> None:
    """Tell systemd we are alive, at most four times per watchdog period."""
    global _last_pet
    period = watchdog_interval_s()
    now = time.monotonic()
    if period is not None and now - _last_pet >= period / 2:
        _last_pet = now
        notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """Half of ``WatchdogSec`` when systemd watches this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
