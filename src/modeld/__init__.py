"""modeld: the daemon. Run it with `modeld serve`; talk to it with :mod:`modeldconn`."""

from modeld.daemon._config import ServeSettings
from modeld.lease._identity import modeld_version

__all__ = ["ServeSettings", "modeld_version"]
