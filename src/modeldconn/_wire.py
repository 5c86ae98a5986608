"""Constants both ends of the wire agree on."""

from __future__ import annotations

__all__ = [
    "CLIENT_METADATA_KEY",
    "INSTANCE_METADATA_KEY",
    "MAX_MESSAGE_BYTES",
    "MIN_PROTOCOL",
    "PROTOCOL",
    "channel_options",
]

#: Wire protocol spoken by this build (modeld.v1.ProtocolVersion.PROTOCOL_VERSION_CURRENT).
PROTOCOL = 1
#: Oldest client protocol a daemon of this build still answers.
MIN_PROTOCOL = 1
#: Every call but health carries the lease's instance id under this key: the fencing token.
INSTANCE_METADATA_KEY = "x-modeld-instance"
#: OpenSession / Restore carry the caller's Attach id under this key, binding the session's life
#: to the client's.
CLIENT_METADATA_KEY = "x-modeld-client"
#: Explicit limit on one message either way: a 128k-token prompt as ids is ~0.6 MB, so 16 MiB is
#: ample for real prompts while an unbounded one is refused by gRPC itself.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
