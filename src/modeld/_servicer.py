"""The modeld.v1.Modeld servicer: it only translates between messages and the daemon's state."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from modeldconn._pb import modeld_pb2, modeld_pb2_grpc
from modeldconn._wire import MIN_PROTOCOL, PROTOCOL

from ._identity import Identity, modeld_version
from ._phase import Gate

__all__ = ["ModeldServicer"]


class ModeldServicer(modeld_pb2_grpc.ModeldServicer):
    def __init__(
        self,
        *,
        identity: Identity,
        backend: str,
        gate: Gate,
        endpoint: Callable[[], str],
    ) -> None:
        self._identity = identity
        self._backend = backend
        self._gate = gate
        self._endpoint = endpoint
        self._started = time.monotonic()

    async def Status(
        self, request: modeld_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> modeld_pb2.StatusResponse:
        return modeld_pb2.StatusResponse(
            instance_id=self._identity.instance_id,
            protocol=PROTOCOL,
            min_protocol=MIN_PROTOCOL,
            backend=self._backend,
            version=modeld_version(),
            state=self._gate.phase.value,
            pid=self._identity.pid,
            host=self._identity.host,
            endpoint=self._endpoint(),
            uptime_s=time.monotonic() - self._started,
        )
