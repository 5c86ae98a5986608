"""Shared with the daemon: the one typed error table (the daemon raises, the client catches).

Every failure a client can cause has a stable reason code, a gRPC status code and a class here.
On the wire an error is a ``google.rpc.Status`` whose single detail is an
``ErrorInfo(reason, domain="modeld", metadata)``; :func:`error_from_rpc` rebuilds the class.

    ModeldError
     ├── ProbeError                 (offline probe; raised by ProbeResult.raise_for_state)
     │    ├── DaemonNotRunning
     │    ├── LeaseStale
     │    └── DaemonUnreachable
     └── RemoteError                (anything the daemon answered with)
          ├── StaleFence            stale_fence          FAILED_PRECONDITION
          ├── SessionNotFound       session_not_found    NOT_FOUND
          ├── SessionBusy           session_busy         ABORTED
          ├── SessionFatal          session_fatal        INTERNAL
          ├── ContextOverflow       context_overflow     OUT_OF_RANGE
          ├── InsufficientMemory    insufficient_memory  RESOURCE_EXHAUSTED
          ├── BackendMismatch       backend_mismatch     FAILED_PRECONDITION
          ├── DigestMismatch        digest_mismatch      FAILED_PRECONDITION
          ├── ModelNotFound         model_not_found      NOT_FOUND
          ├── ModelLoadFailed       model_load_failed    FAILED_PRECONDITION
          ├── ModelPathForbidden    model_path_forbidden PERMISSION_DENIED
          ├── InvalidArgument       invalid_argument     INVALID_ARGUMENT
          ├── Overloaded            overloaded           RESOURCE_EXHAUSTED
          ├── UnsupportedFeature    unsupported_feature  UNIMPLEMENTED
          ├── NotReady              not_ready            UNAVAILABLE
          ├── Draining              draining             UNAVAILABLE
          ├── SnapshotMismatch      snapshot_mismatch    FAILED_PRECONDITION
          ├── SnapshotNotFound      snapshot_not_found   NOT_FOUND
          ├── SnapshotFailed        snapshot_failed      RESOURCE_EXHAUSTED
          ├── Unauthenticated       unauthenticated      UNAUTHENTICATED
          ├── UnknownClient         unknown_client       FAILED_PRECONDITION
          ├── UnsupportedProtocol   unsupported_protocol FAILED_PRECONDITION
          ├── CapabilityMismatch    capability_mismatch  FAILED_PRECONDITION
          ├── PermissionDenied      permission_denied    PERMISSION_DENIED
          ├── ModelLoadTimeout      model_load_timeout   DEADLINE_EXCEEDED
          ├── ModelInUse            model_in_use         FAILED_PRECONDITION
          ├── Unavailable           unavailable          UNAVAILABLE   (no answer at all)
          └── InternalError         internal             INTERNAL      (a daemon bug; logged there)

The same table is written, with each reason's metadata keys, as ``enum ErrorReason`` in
``proto/modeld/v1/modeld.proto`` for clients in other languages; a test keeps the two equal.
An ``invalid_argument`` whose metadata names a ``field`` also carries the standard
``google.rpc.BadRequest`` detail with one ``FieldViolation`` for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "DOMAIN",
    "BackendMismatch",
    "CapabilityMismatch",
    "ContextOverflow",
    "DaemonNotRunning",
    "DaemonUnreachable",
    "DigestMismatch",
    "Draining",
    "InsufficientMemory",
    "InternalError",
    "InvalidArgument",
    "LeaseStale",
    "ModelInUse",
    "ModelLoadFailed",
    "ModelLoadTimeout",
    "ModelNotFound",
    "ModelPathForbidden",
    "ModeldError",
    "NotReady",
    "Overloaded",
    "PermissionDenied",
    "ProbeError",
    "RemoteError",
    "SessionBusy",
    "SessionFatal",
    "SessionNotFound",
    "SnapshotFailed",
    "SnapshotMismatch",
    "SnapshotNotFound",
    "StaleFence",
    "Unauthenticated",
    "Unavailable",
    "UnknownClient",
    "UnsupportedFeature",
    "UnsupportedProtocol",
    "error_from_rpc",
    "reason_table",
]

DOMAIN = "modeld"


class ModeldError(Exception):
    """Root of every error modeld and modeldconn raise on purpose."""


class ProbeError(ModeldError):
    """The offline probe found no daemon to talk to."""


class DaemonNotRunning(ProbeError):
    """No lease file: no daemon leads this data root."""


class LeaseStale(ProbeError):
    """A lease exists but proves nothing: expired, corrupt, or its holder is dead."""


class DaemonUnreachable(ProbeError):
    """The lease is fresh, but its endpoint does not answer, or answers as another instance."""


_BY_REASON: dict[str, type[RemoteError]] = {}


class RemoteError(ModeldError):
    """An error the daemon answered with; ``reason`` and ``grpc_code`` come from the table."""

    reason: ClassVar[str] = "internal"
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        #: string facts that explain the error (numbers for context_overflow, say)
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "reason" not in cls.__dict__:
            return  # a narrower kind of an existing reason (the daemon's own); same wire form
        if cls.reason in _BY_REASON:
            raise TypeError(f"reason {cls.reason!r} registered twice")
        _BY_REASON[cls.reason] = cls

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.reason, self.message, self.metadata))

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
        info.metadata.update(self.metadata)
        status = status_pb2.Status(code=self.grpc_code.value[0], message=str(self))
        status.details.add().Pack(info)
        field = self.metadata.get("field")
        if field and self.grpc_code is grpc.StatusCode.INVALID_ARGUMENT:
            # the standard detail, so generic gRPC tooling shows which field was refused
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=field, description=self.message
            )
            status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        return status


def _rebuild(reason: str, message: str, metadata: Mapping[str, str]) -> RemoteError:
    return _BY_REASON.get(reason, InternalError)(message, **metadata)


# One class per row of the table; registering in __init_subclass__ keeps the table and the
# classes from drifting apart.


class StaleFence(RemoteError):
    """The call or handle names another daemon instance than the one answering."""

    reason = "stale_fence"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class SessionNotFound(RemoteError):
    """No open session has this handle (never opened, or closed)."""

    reason = "session_not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND


class SessionBusy(RemoteError):
    """Another operation on this session is still running."""

    reason = "session_busy"
    grpc_code = grpc.StatusCode.ABORTED


class SessionFatal(RemoteError):
    """The session's state is lost; close it and open another."""

    reason = "session_fatal"
    grpc_code = grpc.StatusCode.INTERNAL


class ContextOverflow(RemoteError):
    """The input does not fit the session's context; nothing was changed."""

    reason = "context_overflow"
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class InsufficientMemory(RemoteError):
    """The requested context does not fit in free memory."""

    reason = "insufficient_memory"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackendMismatch(RemoteError):
    """The model's type is not the backend this daemon serves."""

    reason = "backend_mismatch"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class DigestMismatch(RemoteError):
    """The model file's digest is not the one the ModelRef names."""

    reason = "digest_mismatch"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class ModelNotFound(RemoteError):
    """No model file at the path or under the name given."""

    reason = "model_not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelLoadFailed(RemoteError):
    """The file exists but the backend cannot load it."""

    reason = "model_load_failed"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class ModelPathForbidden(RemoteError):
    """The path resolves (symlinks followed) outside the models directory and allowed roots."""

    reason = "model_path_forbidden"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class InvalidArgument(RemoteError):
    """A field is missing, empty or out of range."""

    reason = "invalid_argument"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(RemoteError):
    """The daemon's queue is full; retry after metadata['retry_after_s']."""

    reason = "overloaded"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnsupportedFeature(RemoteError):
    """The serving backend does not have this capability."""

    reason = "unsupported_feature"
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class NotReady(RemoteError):
    """The daemon is starting or standing by and does not serve yet."""

    reason = "not_ready"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Draining(RemoteError):
    """The daemon is shutting down and takes no new work."""

    reason = "draining"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class SnapshotMismatch(RemoteError):
    """The snapshot belongs to another model or runtime configuration."""

    reason = "snapshot_mismatch"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class SnapshotNotFound(RemoteError):
    """No snapshot has this id (never taken, or evicted by the byte budget)."""

    reason = "snapshot_not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND


class SnapshotFailed(RemoteError):
    """The snapshot could not be written (disk full, size limit); nothing was left behind."""

    reason = "snapshot_failed"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(RemoteError):
    """The call carried no valid credentials."""

    reason = "unauthenticated"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class UnknownClient(RemoteError):
    """``x-modeld-client`` names no live Attach stream of this instance; nothing was opened."""

    reason = "unknown_client"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class UnsupportedProtocol(RemoteError):
    """The client's protocol is older than the daemon's ``min_protocol`` (or the daemon's is
    older than the client speaks)."""

    reason = "unsupported_protocol"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class CapabilityMismatch(RemoteError):
    """The model cannot do the task asked of it (``OpenSession`` on an embedding-only model,
    ``Rerank`` on a model that cannot score); metadata ``task`` and ``tasks`` (what it can)."""

    reason = "capability_mismatch"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(RemoteError):
    """The session belongs to another client (metadata ``handle``): a caller that names a client
    sees and controls only that client's sessions; the operator (no client named) sees all."""

    reason = "permission_denied"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ModelLoadTimeout(RemoteError):
    """The model did not load within its load timeout (metadata ``name``, ``timeout_s``);
    nothing of the attempt stays resident."""

    reason = "model_load_timeout"
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ModelInUse(RemoteError):
    """``UnloadModel`` without ``park_sessions`` on a model whose sessions hold live KV
    (metadata ``name``, ``live_sessions``): ask again with ``park_sessions``, or close them."""

    reason = "model_in_use"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(RemoteError):
    """The endpoint did not answer (the daemon may have died or moved)."""

    reason = "unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class InternalError(RemoteError):
    """A daemon bug; the daemon logged the traceback."""

    reason = "internal"
    grpc_code = grpc.StatusCode.INTERNAL


def reason_table() -> dict[str, type[RemoteError]]:
    """reason → class, for every reason the daemon can send."""
    return dict(_BY_REASON)


def error_from_rpc(error: grpc.RpcError) -> RemoteError:
    """The most specific :class:`RemoteError` for a failed call, chained to ``error``."""
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain == DOMAIN:
                    cls = _BY_REASON.get(info.reason, InternalError)
                    message = status.message.removeprefix(f"{info.reason}: ")
                    built = cls(message, **dict(info.metadata))
                    built.__cause__ = error
                    return built
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    # Failures that never reached modeld's handlers (transport, deadline, size limits).
    fallback: dict[grpc.StatusCode | None, type[RemoteError]] = {
        grpc.StatusCode.UNAVAILABLE: Unavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
        # the daemon's server stopped mid-call (a fenced or killed leader cancels what it had)
        grpc.StatusCode.CANCELLED: Unavailable,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.RESOURCE_EXHAUSTED: InvalidArgument,  # grpc's own message-size limit
        grpc.StatusCode.UNIMPLEMENTED: UnsupportedFeature,
    }
    built = fallback.get(code, InternalError)(f"{code.name if code else 'error'}: {details}")
    built.__cause__ = error
    return built
