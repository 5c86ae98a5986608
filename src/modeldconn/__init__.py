"""modeldconn: the thin client of modeld. Imports no inference library and never the daemon.

import modeldconn
if modeldconn.available():
    print(modeldconn.backend())
"""

from ._dataroot import resolve_data_root, set_data_root
from ._errors import (
    BackendMismatch,
    ContextOverflow,
    DaemonNotRunning,
    DaemonUnreachable,
    DigestMismatch,
    Draining,
    InsufficientMemory,
    InternalError,
    InvalidArgument,
    LeaseStale,
    ModeldError,
    ModelLoadFailed,
    ModelNotFound,
    NotReady,
    Overloaded,
    ProbeError,
    RemoteError,
    SessionBusy,
    SessionFatal,
    SessionNotFound,
    SnapshotMismatch,
    StaleFence,
    Unauthenticated,
    Unavailable,
    UnsupportedFeature,
)
from ._lease import LeaseRecord
from ._probe import ProbeResult, ProbeState, available, backend, probe

__all__ = [
    "BackendMismatch",
    "ContextOverflow",
    "DaemonNotRunning",
    "DaemonUnreachable",
    "DigestMismatch",
    "Draining",
    "InsufficientMemory",
    "InternalError",
    "InvalidArgument",
    "LeaseRecord",
    "LeaseStale",
    "ModelLoadFailed",
    "ModelNotFound",
    "ModeldError",
    "NotReady",
    "Overloaded",
    "ProbeError",
    "ProbeResult",
    "ProbeState",
    "RemoteError",
    "SessionBusy",
    "SessionFatal",
    "SessionNotFound",
    "SnapshotMismatch",
    "StaleFence",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedFeature",
    "available",
    "backend",
    "probe",
    "resolve_data_root",
    "set_data_root",
]
