"""The daemon's phase, and the gate every RPC but health passes through."""

from __future__ import annotations

import enum
import time

from modeldconn._errors import Draining, NotReady, StaleFence

__all__ = ["LEASE_MARGIN_FRACTION", "Gate", "Phase", "leadership_window_s"]

#: leadership ends this fraction of the TTL before the lease can expire, leaving time to stop
LEASE_MARGIN_FRACTION = 0.25


def leadership_window_s(ttl_s: float) -> float:
    """How long one successful renewal keeps a daemon's leadership provable."""
    return ttl_s * (1 - LEASE_MARGIN_FRACTION)


class Phase(enum.Enum):
    STANDBY = "standby"  #: listening, another instance holds the lease; answers only Status
    STARTING = "starting"  #: lease won (state=starting), not yet serving
    SERVING = "serving"  #: lease says serving and renewals keep it valid
    DRAINING = "draining"  #: SIGTERM/SIGINT received; in-flight work finishes, nothing new starts
    FENCED = "fenced"  #: leadership lost or unprovable; serves nothing until the process exits


class Gate:
    """Decides whether this process may do work right now.

    Leadership is held only until ``valid_until`` (monotonic), pushed forward by each successful
    renewal; a process frozen past it (SIGSTOP, a stuck disk) refuses work the moment it runs
    again, before its renew loop has even noticed.
    """

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.phase = Phase.STANDBY
        self.valid_until = 0.0
        self.fence_reason = ""

    def check_fence(self, claimed_instance: str | None) -> None:
        if claimed_instance and claimed_instance != self.instance_id:
            raise StaleFence(
                f"this is instance {self.instance_id}; the call was meant for {claimed_instance}",
                served_by=self.instance_id,
                requested=claimed_instance,
            )

    def check_serving(self) -> None:
        if self.phase is Phase.SERVING:
            if time.monotonic() < self.valid_until:
                return
            raise NotReady("the lease could not be renewed in time; not serving")
        if self.phase is Phase.DRAINING:
            raise Draining("the daemon is shutting down")
        if self.phase is Phase.FENCED:
            raise NotReady(f"this instance lost leadership: {self.fence_reason}")
        raise NotReady(f"the daemon is {self.phase.value}", phase=self.phase.value)
