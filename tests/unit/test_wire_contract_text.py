"""Issue 15: the contract written where a client in another language looks (the proto and the
lease schema), checked against the Python that implements it, so the two cannot drift."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from google.rpc import error_details_pb2

from modeld.lease._gate import Phase
from modeld.rpc._interceptors import check_protocol
from modeldconn._client import TapeClaim
from modeldconn._errors import InvalidArgument, UnsupportedProtocol, reason_table
from modeldconn._lease import LeaseRecord, LoadedModel, parse_lease
from modeldconn._pb import modeld_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
PROTO = (ROOT / "proto" / "modeld" / "v1" / "modeld.proto").read_text()
SCHEMA: dict[str, Any] = json.loads(
    (ROOT / "proto" / "modeld" / "v1" / "lease.schema.json").read_text()
)


def _reasons_in_proto() -> dict[str, str]:
    """reason -> the gRPC code its comment names, from ``enum ErrorReason``."""
    block = PROTO[PROTO.index("enum ErrorReason {") :]
    block = block[: block.index("\n}")]
    found: dict[str, str] = {}
    comment = ""
    for line in block.splitlines()[1:]:
        line = line.strip()
        if line.startswith("//"):
            comment += line[2:] + " "
            continue
        match = re.match(r"ERROR_REASON_(\w+) = \d+;", line)
        if match and match.group(1) != "UNSPECIFIED":
            code = re.match(r"\s*([A-Z_]+)", comment)
            assert code is not None, f"{match.group(1)}: no gRPC code in its comment"
            found[match.group(1).lower()] = code.group(1)
        comment = ""
    return found


def test_every_reason_in_the_table_is_in_the_proto_with_its_code() -> None:
    in_proto = _reasons_in_proto()
    table = {reason: cls.grpc_code.name for reason, cls in reason_table().items()}
    assert in_proto == table


def test_the_proto_lists_every_stop_reason_the_daemon_produces() -> None:
    source = (ROOT / "src" / "modeld" / "sessions" / "_generation.py").read_text()
    produced = set(re.findall(r'stop_reason(?:, \w+)* = "(\w+)"', source))
    produced |= set(re.findall(r'stop_reason(?:, \w+)*, *\w+ = "(\w+)"', source))
    block = PROTO[PROTO.index("message DecodeFinal {") :]
    block = block[: block.index("string stop_reason = 1;")]
    listed = set(re.findall(r"//   (\w+) ", block))
    assert produced, "the scan found no stop reasons"
    assert produced == listed


def test_the_proto_lists_every_daemon_state() -> None:
    line = next(x for x in PROTO.splitlines() if "every value the daemon produces: standby" in x)
    listed = {v.strip() for v in line.split(":", 1)[1].split("|")}
    assert listed == {phase.value for phase in Phase}


def test_invalid_argument_carries_a_field_violation() -> None:
    status = InvalidArgument("temperature=nan: must be finite", field="config.temperature")
    details = status.to_status().details
    violations = [
        v
        for d in details
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)
        for v in _unpack_bad_request(d).field_violations
    ]
    assert [(v.field, v.description) for v in violations] == [
        ("config.temperature", "temperature=nan: must be finite")
    ]


def _unpack_bad_request(detail: Any) -> error_details_pb2.BadRequest:
    request = error_details_pb2.BadRequest()
    detail.Unpack(request)
    return request


def test_an_old_protocol_is_refused_typed() -> None:
    check_protocol(None)  # a client that does not say is taken as protocol 1
    check_protocol("1")
    with pytest.raises(UnsupportedProtocol) as caught:
        check_protocol("0")
    assert caught.value.metadata["client_protocol"] == "0"
    assert caught.value.grpc_code is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(InvalidArgument) as bad:
        check_protocol("one")
    assert bad.value.metadata["field"] == "x-modeld-protocol"


def test_tape_claim_follows_what_the_client_read() -> None:
    tape = TapeClaim()
    assert tape.to_send() is None  # nothing known: send nothing
    tape.answered(30)  # EnsurePrefix: 30 tokens
    assert tape.to_send() is None
    tape.decode_started()
    assert tape.to_send() == 30  # a Decode made but not read: claim what we had
    tape.chunk_read(31, final=False)
    tape.chunk_read(32, final=False)
    assert tape.to_send() == 32  # left after two chunks
    tape.decode_started()
    tape.chunk_read(33, final=False)
    tape.chunk_read(33, final=True)
    assert tape.to_send() is None  # read to the end: nothing to claim
    tape.decode_started()
    tape.refused(InvalidArgument("too long", field="tape_tokens"))
    assert tape.to_send() is None and tape.known is None


# -- the lease schema, by the jsonschema library ------------------------------------------------


def _validate(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty: valid), by a real JSON Schema validator."""
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '$'}: {e.message}"
        for e in validator.iter_errors(value)
    ]


def _record(state: str, **changes: Any) -> LeaseRecord:
    now = time.time()
    values: dict[str, Any] = {
        "instance_id": "9d00a171-4624-45ea-a843-f584404b74c1",
        "pid": 7260,
        "pid_start_time": now - 5,
        "host": "vm",
        "endpoint": "unix:///home/me/.local/state/modeld/modeld-9d00a171.sock",
        "backend": "llama",
        "protocol": 1,
        "version": "0.1.0",
        "acquired_at": now,
        "renewed_at": now,
        "ttl_s": 15.0,
        "state": state,
    }
    values.update(changes)
    return LeaseRecord(**values)


@pytest.mark.parametrize("state", ["starting", "serving", "draining"])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"model": LoadedModel("gemma3-270m", "ab" * 32), "auth": True},
        {"endpoint": "127.0.0.1:7000", "tls": True, "backend": "openvino"},
    ],
)
def test_lease_files_the_daemon_writes_validate(state: str, extra: dict[str, Any]) -> None:
    text = _record(state, **extra).to_json()  # exactly what the lease store writes
    assert _validate(json.loads(text), SCHEMA) == []
    parse_lease(text)  # and what the Python reader accepts


@pytest.mark.parametrize(
    "broken",
    [
        {"state": "fenced"},
        {"schema": 2},
        {"endpoint": "not an endpoint"},
        {"instance_id": "short"},
        {"ttl_s": 0},
        {"pid": "7260"},
    ],
)
def test_the_schema_refuses_what_readers_refuse(broken: dict[str, Any]) -> None:
    data = json.loads(_record("serving").to_json())
    data.update(broken)
    assert _validate(data, SCHEMA) != []


def test_every_lease_field_is_in_the_schema() -> None:
    written = set(json.loads(_record("serving").to_json()))
    assert written == set(SCHEMA["properties"])
    assert set(SCHEMA["required"]) <= written


def test_decode_chunks_and_requests_carry_the_tape_fields() -> None:
    for message in (pb.DecodeRequest, pb.PrefillSuffixRequest, pb.EnsurePrefixRequest):
        assert message.DESCRIPTOR.fields_by_name["tape_tokens"].has_presence
    assert "tape_tokens" in pb.DecodeChunk.DESCRIPTOR.fields_by_name
