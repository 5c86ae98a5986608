"""modeld: the daemon. Run it with `modeld serve`; talk to it with :mod:`modeldconn`."""

from ._config import ServeSettings
from ._identity import modeld_version

__all__ = ["ServeSettings", "modeld_version"]
