"""Dial a lease's endpoint and prove the answer comes from the instance the lease names."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _requests as rq
from ._lease import LeaseRecord
from ._tls import open_channel
from ._wire import AUTH_METADATA_KEY, INSTANCE_METADATA_KEY

__all__ = ["check_endpoint"]


def check_endpoint(
    lease: LeaseRecord, *, timeout_s: float, auth_token: str = "", tls_ca: bytes | None = None
) -> tuple[str, str] | None:
    """None when the endpoint answers as ``lease.instance_id``; else ``(reason, detail)``."""
    with open_channel(lease.endpoint, lease.tls, tls_ca) as channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
            call = rq.status()
            reply = rq.stub(channel).Status(
                call.request,
                timeout=timeout_s,
                metadata=(
                    (INSTANCE_METADATA_KEY, lease.instance_id),
                    *(((AUTH_METADATA_KEY, f"Bearer {auth_token}"),) if auth_token else ()),
                ),
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code is grpc.StatusCode.FAILED_PRECONDITION:
                return "other-instance", f"{lease.endpoint} is served by another instance"
            return "no-answer", f"{lease.endpoint} did not answer ({code.name if code else exc})"
    status = call.parse(reply)
    if status.instance_id != lease.instance_id:
        return (
            "other-instance",
            f"{lease.endpoint} answered as instance {status.instance_id}, "
            f"the lease names {lease.instance_id}",
        )
    if lease.state == "serving" and health.status != health_pb2.HealthCheckResponse.SERVING:
        return "not-serving", f"the lease says serving, health says {health.status}"
    return None
