"""The daemon's start-up and shutdown: settings, data root, the numbered start-up steps
(``_serve``), systemd notification. The top layer: it wires lease, rpc, sessions and engine."""

from modeld.daemon._config import ServeSettings

__all__ = ["ServeSettings"]
