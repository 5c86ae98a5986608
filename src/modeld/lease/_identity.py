"""Who this daemon process is, as the lease records it."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import cache
from importlib import metadata

from modeldconn._lease import process_start_time, this_host

__all__ = ["Identity", "modeld_version"]


@cache  # reading package metadata costs ~0.2 ms; Status answers it on every call
def modeld_version() -> str:
    try:
        return metadata.version("modeld")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+source"


@dataclass(frozen=True)
class Identity:
    instance_id: str  #: uuid4: the fencing token; a new one each process start
    pid: int
    pid_start_time: float
    host: str

    @property
    def short_id(self) -> str:
        return self.instance_id[:8]

    @classmethod
    def of_this_process(cls) -> Identity:
        pid = os.getpid()
        start = process_start_time(pid)
        assert start is not None  # this process is alive by definition
        return cls(str(uuid.uuid4()), pid, start, this_host())
