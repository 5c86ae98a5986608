"""Shared with the daemon: the constants both ends of the wire agree on."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "AUTH_METADATA_KEY",
    "AUTH_TOKEN_FILE_NAME",
    "CLIENT_METADATA_KEY",
    "ENV_AUTH_TOKEN",
    "INSTANCE_METADATA_KEY",
    "MAX_MESSAGE_BYTES",
    "MIN_PROTOCOL",
    "PROTOCOL",
    "PROTOCOL_METADATA_KEY",
    "channel_options",
    "find_auth_token",
]

#: Wire protocol spoken by this build (modeld.v1.ProtocolVersion.PROTOCOL_VERSION_CURRENT).
PROTOCOL = 1
#: Oldest client protocol a daemon of this build still answers.
MIN_PROTOCOL = 1
#: The fencing token: the lease's instance id. Optional (see the proto's header for why a
#: handle's instance id suffices); when sent, it must name the answering instance.
INSTANCE_METADATA_KEY = "x-modeld-instance"
#: OpenSession / Restore carry the caller's Attach id under this key, binding the session's life
#: to the client's; an id no live Attach stream issued is refused (unknown_client).
CLIENT_METADATA_KEY = "x-modeld-client"
#: The client's protocol (decimal); absent means 1. Older than MIN_PROTOCOL: unsupported_protocol.
PROTOCOL_METADATA_KEY = "x-modeld-protocol"
#: A daemon started with --auth-token-file wants ``Bearer <token>`` under this key.
AUTH_METADATA_KEY = "authorization"
#: Where local clients find the token when none is passed: ``<data root>/auth.token``.
AUTH_TOKEN_FILE_NAME = "auth.token"
#: ...or in this environment variable.
ENV_AUTH_TOKEN = "MODELD_AUTH_TOKEN"
#: Explicit limit on one message either way: a 128k-token prompt as ids is ~0.6 MB, so 16 MiB is
#: ample for real prompts while an unbounded one is refused by gRPC itself.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def find_auth_token(root: Path, explicit: str | None) -> str:
    """The token to send: ``explicit`` > ``$MODELD_AUTH_TOKEN`` > ``<root>/auth.token`` > none."""
    if explicit:
        return explicit
    if token := os.environ.get(ENV_AUTH_TOKEN, ""):
        return token.strip()
    try:
        return (root / AUTH_TOKEN_FILE_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
