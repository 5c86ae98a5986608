"""Build the gRPC server: the modeld service, standard health, reflection (v1 and v1alpha),
the interceptors."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from modeld._errors import StartupError
from modeld._metrics import Metrics
from modeld.lease._gate import Gate
from modeld.rpc._auth import AuthInterceptor
from modeld.rpc._interceptors import GateInterceptor
from modeld.rpc._listener import Listener
from modeld.rpc._servicer import ModeldServicer
from modeld.rpc._tls import TlsIdentity
from modeldconn._pb import modeld_pb2, modeld_pb2_grpc
from modeldconn._wire import channel_options

__all__ = ["BoundServer", "bind_server"]

_MODELD_SERVICE = modeld_pb2.DESCRIPTOR.services_by_name["Modeld"].full_name
#: grpcio-reflection ships only v1alpha; current grpcurl (and other tools) ask v1 first. The two
#: protocols are the same messages under another package name, so v1 is the v1alpha servicer
#: behind a second service name, reading and writing the same bytes.
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVING = health_pb2.HealthCheckResponse.SERVING


def _add_reflection(server: grpc.aio.Server) -> None:
    names = (
        _MODELD_SERVICE,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        REFLECTION_V1_SERVICE,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    v1 = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        v1.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1_SERVICE, {"ServerReflectionInfo": handler}
            ),
        )
    )


@dataclass
class BoundServer:
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int

    async def set_serving(self, serving: bool) -> None:
        status = _SERVING if serving else _NOT_SERVING
        for service in ("", _MODELD_SERVICE):
            await self.health.set(service, status)


async def bind_server(
    listener: Listener,
    gate: Gate,
    servicer: ModeldServicer,
    metrics: Metrics,
    auth_token: str | None = None,
    tls: TlsIdentity | None = None,
) -> BoundServer:
    """Create the server and bind its listener (not started); health starts NOT_SERVING."""
    options = [
        *channel_options(),
        # grpc sets SO_REUSEPORT by default: a second daemon could then bind the same TCP port
        # and the kernel would hand it the leader's clients.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(
        interceptors=[
            *(
                [AuthInterceptor(auth_token)] if auth_token else []
            ),  # first: nothing runs unauthenticated
            GateInterceptor(gate, metrics),
        ],
        options=options,
    )
    modeld_pb2_grpc.add_ModeldServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    _add_reflection(server)
    listener.prepare()
    try:
        if tls is None:
            port = server.add_insecure_port(listener.grpc_address)
        else:
            credentials = grpc.ssl_server_credentials([(tls.private_key, tls.certificate_chain)])
            port = server.add_secure_port(listener.grpc_address, credentials)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {listener.grpc_address}: {exc}") from None
    if port == 0 and listener.socket_path is None:
        raise StartupError(f"cannot listen on {listener.grpc_address}: address in use?")
    listener.after_bind()
    bound = BoundServer(server, health, port)
    await bound.set_serving(False)
    return bound
