"""Shared with the daemon: is a daemon up on this data root? Answered offline from the lease.

The daemon takes ``DEFAULT_LEASE_TTL_S`` from here and its CLI asks the same probe (``modeld
lease show``, ``status``). A probe takes well under a millisecond.

    import modeldconn
    if modeldconn.available():
        print("modeld serves", modeldconn.backend())
    modeldconn.probe().raise_for_state()   # DaemonNotRunning / LeaseStale / DaemonUnreachable

Only ``probe(health=True)`` touches the network: it dials the lease's endpoint and asks the
standard health service, then the daemon's Status, to prove the answer comes from the instance the
lease names.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass

from ._dataroot import resolve_data_root
from ._errors import DaemonNotRunning, DaemonUnreachable, LeaseStale, ProbeError
from ._lease import Assessment, LeaseRecord, LeaseStatus, assess_lease, read_lease
from ._wire import find_auth_token

__all__ = ["DEFAULT_LEASE_TTL_S", "ProbeResult", "ProbeState", "available", "backend", "probe"]

#: The daemon's default lease TTL; it also ages a corrupt lease file, which names no TTL.
DEFAULT_LEASE_TTL_S = 15.0


class ProbeState(str, enum.Enum):
    NOT_RUNNING = "not-running"  #: no lease file
    STALE = "stale"  #: a lease that proves nothing: expired, corrupt, or holder dead
    RUNNING = "running"  #: a fresh lease held by a live process
    UNREACHABLE = "unreachable"  #: running by the lease, but the endpoint did not answer as it


_STALE_REASONS = {
    LeaseStatus.EXPIRED: "expired",
    LeaseStatus.HOLDER_DEAD: "holder-dead",
    LeaseStatus.CORRUPT: "corrupt",
    LeaseStatus.CORRUPT_EXPIRED: "corrupt",
}


@dataclass(frozen=True)
class ProbeResult:
    state: ProbeState
    #: why stale (expired | corrupt | holder-dead) or unreachable (no-answer | other-instance |
    #: not-serving | no-ca); empty otherwise
    reason: str
    detail: str
    lease: LeaseRecord | None
    expires_in_s: float | None

    @property
    def serving(self) -> bool:
        """Running, and the lease says the daemon takes work (not starting or draining)."""
        return (
            self.state is ProbeState.RUNNING
            and self.lease is not None
            and (self.lease.state == "serving")
        )

    def raise_for_state(self) -> ProbeResult:
        """Return self when running; otherwise raise the state's own :class:`ProbeError`."""
        error: type[ProbeError] | None = {
            ProbeState.NOT_RUNNING: DaemonNotRunning,
            ProbeState.STALE: LeaseStale,
            ProbeState.UNREACHABLE: DaemonUnreachable,
        }.get(self.state)
        if error is not None:
            raise error(f"{self.state.value}: {self.detail}")
        return self


def result_from_assessment(assessment: Assessment, now: float) -> ProbeResult:
    expires_in = None if assessment.expires_at is None else assessment.expires_at - now
    if assessment.status is LeaseStatus.ABSENT:
        return ProbeResult(ProbeState.NOT_RUNNING, "", assessment.detail, None, None)
    if assessment.status is LeaseStatus.LIVE:
        return ProbeResult(ProbeState.RUNNING, "", assessment.detail, assessment.record, expires_in)
    reason = _STALE_REASONS[assessment.status]
    return ProbeResult(ProbeState.STALE, reason, assessment.detail, assessment.record, expires_in)


def probe(
    *,
    data_root: str | os.PathLike[str] | None = None,
    health: bool = False,
    timeout_s: float = 1.0,
) -> ProbeResult:
    """Read the lease and say what it proves; with ``health=True`` also dial the endpoint."""
    root = resolve_data_root(data_root)
    now = time.time()
    result = result_from_assessment(
        assess_lease(read_lease(root), default_ttl_s=DEFAULT_LEASE_TTL_S, now=now), now
    )
    if health and result.state is ProbeState.RUNNING and result.lease is not None:
        from ._health import check_endpoint  # grpc is imported only when asked to dial
        from ._tls import find_tls_ca

        token = find_auth_token(root, None) if result.lease.auth else ""
        try:
            ca = find_tls_ca(root, None) if result.lease.tls else None
        except OSError as exc:
            return ProbeResult(ProbeState.UNREACHABLE, "no-ca", str(exc), result.lease, None)
        problem = check_endpoint(result.lease, timeout_s=timeout_s, auth_token=token, tls_ca=ca)
        if problem is not None:
            reason, detail = problem
            return ProbeResult(ProbeState.UNREACHABLE, reason, detail, result.lease, None)
    return result


def available(*, data_root: str | os.PathLike[str] | None = None) -> bool:
    """True when a live daemon leads this data root and serves (offline, no network)."""
    return probe(data_root=data_root).serving


def backend(*, data_root: str | os.PathLike[str] | None = None) -> str:
    """The running daemon's backend (``llama`` | ``openvino``), or ``""`` when none runs."""
    result = probe(data_root=data_root)
    return result.lease.backend if result.state is ProbeState.RUNNING and result.lease else ""
