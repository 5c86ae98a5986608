"""Request bodies that are not valid messages (issue 13, fault 6): every method answers a
typed ``invalid_argument``, the daemon logs at most a rate-limited line, and keeps serving."""

from __future__ import annotations

import random
from collections.abc import Iterator

import grpc
import pytest
from daemons import Served
from served_models import TINY as MODEL

import modeldconn
from modeldconn._errors import InvalidArgument, error_from_rpc
from modeldconn._pb import modeld_pb2 as pb

_SERVICE = pb.DESCRIPTOR.services_by_name["Modeld"]
#: bodies protobuf cannot parse: a truncated varint, a bad wire type, invalid UTF-8 in a string
#: field (field 1 of every request that has a string there), a length past the end
_GARBAGE = [b"\x08", b"\x0f\x00", b"\x0a\x02\xff\xfe", b"\x0a\x7f\x01", b"\xff" * 12]


def _endpoint(served: Served) -> str:
    lease = modeldconn.probe(data_root=served.root).lease
    assert lease is not None
    return lease.endpoint


@pytest.fixture
def channel(served: Served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(_endpoint(served)) as opened:
        yield opened


def _call(channel: grpc.Channel, method: str, streaming: bool, body: bytes) -> None:
    path = f"/{_SERVICE.full_name}/{method}"
    if streaming:
        for _ in channel.unary_stream(path)(body, timeout=10):
            pass
    else:
        channel.unary_unary(path)(body, timeout=10)


def test_every_method_refuses_undecodable_bodies_typed(
    channel: grpc.Channel, served: Served
) -> None:
    methods = [(m.name, m.server_streaming) for m in _SERVICE.methods]
    bodies = [*_GARBAGE, bytes(random.Random(7).randrange(256) for _ in range(64))]
    refused = 0
    for name, streaming in methods:
        for body in bodies:
            try:
                _call(channel, name, streaming, body)
            except grpc.RpcError as caught:
                error = error_from_rpc(caught)
                # a body that happens to parse gets whatever typed answer its fields earn
                assert isinstance(error, modeldconn.RemoteError), (name, body, error)
                assert not isinstance(error, modeldconn.InternalError), (name, body, error)
                if isinstance(error, InvalidArgument) and "not a valid" in str(error):
                    refused += 1
    assert refused >= len(methods) * len(_GARBAGE) - len(methods)  # nearly all refused as such
    log = served.log.read_text()
    assert "Traceback" not in log
    assert log.count("undecodable request") <= 2  # rate-limited: one line per 10 s
    # and the daemon serves on
    with served.client.open_session(MODEL) as session:
        session.ensure_prefix("hello")
        assert session.generate(max_tokens=3, ignore_eos=True).final.completion_tokens == 3
