"""Issue 15 over a real daemon, per backend: the cancel rule, CloseSession during a Decode,
fencing headers, foreign client ids, field violations, reflection v1, protocol negotiation,
and the lease file against its schema."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from daemons import Served, lease_json
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from served_models import TINY as MODEL

import modeldconn
from modeldconn import Client
from modeldconn._errors import UnknownClient, UnsupportedProtocol, error_from_rpc
from modeldconn._pb import modeld_pb2 as pb
from modeldconn._pb import modeld_pb2_grpc

PROMPT = "The quick brown fox jumps over the lazy dog. " * 3
LONG = {"max_tokens": 400, "ignore_eos": True}


def _endpoint(served: Served) -> str:
    lease = modeldconn.probe(data_root=served.root).lease
    assert lease is not None
    return lease.endpoint


@pytest.fixture
def stub(served: Served) -> Iterator[Any]:
    with grpc.insecure_channel(_endpoint(served)) as channel:
        yield modeld_pb2_grpc.ModeldStub(channel)  # type: ignore[no-untyped-call]


def _instance(served: Served) -> str:
    return str(lease_json(served.root)["instance_id"])


def _fresh_continuation(client: Client, ids: list[int], max_tokens: int) -> tuple[int, ...]:
    with client.open_session(MODEL) as fresh:
        fresh.ensure_prefix(ids)
        return fresh.generate(max_tokens=max_tokens, ignore_eos=True).token_ids


# -- fault 1: the cancel rule ----------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [1, 5])
def test_after_a_cancel_the_tape_is_what_the_client_received(client: Client, chunks: int) -> None:
    with client.open_session(MODEL) as session:
        ids = session.tokenize(PROMPT, add_special=True)
        session.ensure_prefix(ids)
        received: list[int] = []
        stream = session.decode(**LONG)
        for chunk in stream:
            received.extend(chunk.token_ids)
            if len(received) >= chunks:
                break
        del stream
        time.sleep(1.0)  # the daemon generates past what was read, then unwinds
        held = [*ids, *received]
        # modeldconn says what it holds on the next call: the continuation is the fresh one's
        continued = session.generate(max_tokens=8, ignore_eos=True)
        assert continued.final.prompt_tokens == len(held)
        assert continued.token_ids == _fresh_continuation(client, held, 8)


def test_ensure_prefix_after_a_cancel_drops_nothing(client: Client) -> None:
    with client.open_session(MODEL) as session:
        ids = session.tokenize(PROMPT, add_special=True)
        session.ensure_prefix(ids)
        received: list[int] = []
        for chunk in session.decode(**LONG):
            received.extend(chunk.token_ids)
            if len(received) >= 3:
                break
        time.sleep(1.0)
        result = session.ensure_prefix([*ids, *received])
        assert result.dropped == 0
        assert result.reused + result.prefilled == len(ids) + len(received)
        assert result.reused >= len(ids) + len(received) - 1


def test_without_the_field_the_tape_keeps_what_was_not_read(served: Served, stub: Any) -> None:
    """Today's behaviour, documented: a client that does not say what it holds keeps the
    tokens its cancelled stream never delivered."""
    with served.client.open_session(MODEL) as session:
        ids = session.tokenize(PROMPT, add_special=True)
        session.ensure_prefix(ids)
        call = stub.Decode(
            pb.DecodeRequest(
                handle=session.handle, config=pb.DecodeConfig(max_tokens=400, ignore_eos=True)
            )
        )
        first = next(call)
        call.cancel()
        assert first.tape_tokens == len(ids) + len(first.token_ids)
        time.sleep(0.3)
        reply = stub.PrefillSuffix(
            pb.PrefillSuffixRequest(
                handle=session.handle, suffix=pb.Input(tokens=pb.TokenIds(ids=[5]))
            )
        )
        assert reply.resident > first.tape_tokens + 1
        # a claim longer than the tape is refused, naming the field
        with pytest.raises(grpc.RpcError) as caught:
            stub.PrefillSuffix(
                pb.PrefillSuffixRequest(
                    handle=session.handle,
                    suffix=pb.Input(tokens=pb.TokenIds(ids=[5])),
                    tape_tokens=reply.resident + 1,
                )
            )
        assert _violations(caught.value) == ["tape_tokens"]


# -- fault 2: CloseSession during a Decode -----------------------------------------------------


def test_close_session_ends_a_running_decode(client: Client) -> None:
    session = client.open_session(MODEL)
    session.ensure_prefix(PROMPT)
    chunks: list[modeldconn.DecodeChunk] = []
    started = threading.Event()

    def read() -> None:
        for chunk in session.decode(max_tokens=100_000, ignore_eos=True):
            chunks.append(chunk)
            started.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(30)
    began = time.monotonic()
    assert session.close() is True
    reader.join(10)
    assert not reader.is_alive()
    assert time.monotonic() - began < 5
    final = chunks[-1].final
    assert final is not None and final.stop_reason == "cancelled"
    assert final.completion_tokens < 100_000
    # the engine queue drains (the closed session's release may still be queued a moment)
    deadline = time.monotonic() + 2
    while client.status().queue_depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.status().queue_depth == 0
    with pytest.raises(modeldconn.SessionNotFound):
        session.ensure_prefix("hello")


# -- fault 3: fencing headers, as decided (optional; when present, must match) ------------------


def test_fencing_headers(served: Served, stub: Any) -> None:
    describe = pb.DescribeRequest(model=pb.ModelRef(name=MODEL))
    assert stub.Describe(describe).facts.name == MODEL  # no header: served
    assert stub.Describe(describe, metadata=(("x-modeld-instance", ""),)).facts.name == MODEL
    own = (("x-modeld-instance", _instance(served)),)
    assert stub.Describe(describe, metadata=own).facts.name == MODEL
    with pytest.raises(grpc.RpcError) as caught:
        stub.Describe(describe, metadata=(("x-modeld-instance", "another"),))
    assert isinstance(error_from_rpc(caught.value), modeldconn.StaleFence)
    # a session call without the header is still fenced by the handle's instance
    opened = stub.OpenSession(pb.OpenSessionRequest(model=pb.ModelRef(name=MODEL)))
    forged = "another/" + opened.handle.rpartition("/")[2]
    with pytest.raises(grpc.RpcError) as caught:
        stub.EnsurePrefix(pb.EnsurePrefixRequest(handle=forged, prefix=pb.Input(text="hi")))
    assert isinstance(error_from_rpc(caught.value), modeldconn.StaleFence)
    stub.CloseSession(pb.CloseSessionRequest(handle=opened.handle))


# -- fault 4: a client id Attach never issued --------------------------------------------------


def test_a_foreign_client_id_is_refused(served: Served, stub: Any) -> None:
    before = served.client.status().sessions_open
    with pytest.raises(grpc.RpcError) as caught:
        stub.OpenSession(
            pb.OpenSessionRequest(model=pb.ModelRef(name=MODEL)),
            metadata=(("x-modeld-client", "0" * 32),),
        )
    error = error_from_rpc(caught.value)
    assert isinstance(error, UnknownClient) and error.metadata["client_id"] == "0" * 32
    assert served.client.status().sessions_open == before
    # the Python client attaches first, so its sessions always have a lifeline
    with served.client.open_session(MODEL) as session:
        assert session.generate(suffix="Hello", max_tokens=2).final.completion_tokens >= 1


# -- field violations ---------------------------------------------------------------------------


def _violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def test_every_refused_value_names_its_field(served: Served, stub: Any) -> None:
    opened = stub.OpenSession(pb.OpenSessionRequest(model=pb.ModelRef(name=MODEL)))
    handle = opened.handle
    vocab = opened.facts.vocab_size

    def refused(method: str, request: Any) -> list[str]:
        with pytest.raises(grpc.RpcError) as caught:
            reply = getattr(stub, method)(request)
            if method == "Decode":
                list(reply)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        return _violations(caught.value)

    assert refused("EnsurePrefix", pb.EnsurePrefixRequest(handle=handle)) == ["prefix"]
    assert refused(
        "EnsurePrefix", pb.EnsurePrefixRequest(handle=handle, prefix=pb.Input(text=""))
    ) == ["prefix"]
    out_of_vocab = pb.Input(tokens=pb.TokenIds(ids=[vocab]))
    assert refused("EnsurePrefix", pb.EnsurePrefixRequest(handle=handle, prefix=out_of_vocab)) == [
        "prefix.tokens.ids"
    ]
    assert refused(
        "PrefillSuffix", pb.PrefillSuffixRequest(handle=handle, suffix=out_of_vocab)
    ) == ["suffix.tokens.ids"]
    # an empty tape and nothing to append
    assert refused("Decode", pb.DecodeRequest(handle=handle)) == ["suffix"]
    for name, value in (("temperature", float("nan")), ("top_p", 1.5), ("min_p", -1.0)):
        config = pb.DecodeConfig(**{name: value})
        assert refused(
            "Decode", pb.DecodeRequest(handle=handle, config=config, suffix=pb.Input(text="x"))
        ) == [f"config.{name}"]
    assert refused("Tokenize", pb.TokenizeRequest(text="hello")) == ["model"]
    assert refused("Detokenize", pb.DetokenizeRequest(handle=handle, ids=[vocab])) == ["ids"]
    big = pb.OpenSessionRequest(
        model=pb.ModelRef(name=MODEL), config=pb.SessionConfig(n_ctx=1 << 30)
    )
    assert refused("OpenSession", big) == ["config.n_ctx"]
    stub.CloseSession(pb.CloseSessionRequest(handle=handle))


# -- reflection v1, protocol negotiation, end-of-generation ids, the lease schema ----------


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_the_services(served: Served, version: str) -> None:
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(_endpoint(served)) as channel:
        # v1's messages are v1alpha's under another package name: the same bytes
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(call(iter([request]), timeout=5)))
        names = {s.name for s in reply.list_services_response.service}
        assert {"modeld.v1.Modeld", "grpc.health.v1.Health"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="modeld.v1.Modeld")
        reply = next(iter(call(iter([request]), timeout=5)))
        assert reply.file_descriptor_response.file_descriptor_proto


def test_an_old_protocol_is_refused_typed(stub: Any) -> None:
    old = (("x-modeld-protocol", "0"),)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Describe(pb.DescribeRequest(model=pb.ModelRef(name=MODEL)), metadata=old)
    error = error_from_rpc(caught.value)
    assert isinstance(error, UnsupportedProtocol)
    assert error.metadata == {"client_protocol": "0", "min_protocol": "1", "protocol": "1"}
    status = stub.Status(pb.StatusRequest(), metadata=old)  # the handshake always answers
    assert (status.protocol, status.min_protocol) == (1, 1)


def test_open_session_says_which_ids_end_a_decode(stub: Any) -> None:
    opened = stub.OpenSession(pb.OpenSessionRequest(model=pb.ModelRef(name=MODEL)))
    try:
        eog = set(opened.end_of_generation_ids)
        assert set(opened.facts.eos_token_ids) <= eog
        described = stub.Describe(pb.DescribeRequest(model=pb.ModelRef(name=MODEL)))
        assert set(described.end_of_generation_ids) == eog  # the weights are in now
    finally:
        stub.CloseSession(pb.CloseSessionRequest(handle=opened.handle))


def test_the_live_lease_validates_against_its_schema(served: Served) -> None:
    # the unit test's validator (the JSON Schema subset the schema uses), loaded by path
    unit = Path(__file__).parents[1] / "unit" / "test_wire_contract_text.py"
    spec = importlib.util.spec_from_file_location("issue15_unit_contract", unit)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = lease_json(served.root)
    assert data["state"] == "serving"
    assert module._validate(data, module.SCHEMA) == []
