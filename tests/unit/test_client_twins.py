"""The client's twins stay twins, its public API carries no protobuf, and the generated code
stays behind a short list of modules."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import re
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from daemons import stop_served
from google.protobuf.message import Message
from served_models import TINY, serve_tiny

import modeldconn
from modeldconn import _convert, _types
from modeldconn._client import decode_options
from modeldconn._pb import modeld_pb2 as pb

SRC = Path(__file__).resolve().parents[2] / "src"

# --- (1) the twins expose the same methods ----------------------------------------------------

#: the documented sync/async pairs whose names differ (sync name -> async name)
CLIENT_PAIRS = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}
SESSION_PAIRS = {"__enter__": "__aenter__", "__exit__": "__aexit__"}
#: the async spelling of a sync annotation
ASYNC_SPELLING = {"Iterator[": "AsyncIterator[", "Session": "AsyncSession", "Client": "AsyncClient"}


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def _async_spelling(annotation: object) -> str:
    text = str(annotation)
    for sync, asynchronous in ASYNC_SPELLING.items():
        # whole names only: SessionListing is the same type in both twins
        whole = re.escape(sync) + (r"\b" if sync[-1].isalnum() else "")
        text = re.sub(r"\bAsync" + whole, sync, text)
        text = re.sub(r"\b" + whole, asynchronous, text)
    return text


@pytest.mark.parametrize(
    ("sync", "asynchronous", "pairs"),
    [
        (modeldconn.Client, modeldconn.AsyncClient, CLIENT_PAIRS),
        (modeldconn.Session, modeldconn.AsyncSession, SESSION_PAIRS),
    ],
)
def test_twins_expose_the_same_methods(
    sync: type, asynchronous: type, pairs: dict[str, str]
) -> None:
    renamed = {pairs.get(name, name) for name in _public(sync) | set(pairs)}
    assert renamed == _public(asynchronous) | set(pairs.values())
    for sync_name in sorted(_public(sync) | set(pairs)):
        async_name = pairs.get(sync_name, sync_name)
        sync_sig = inspect.signature(getattr(sync, sync_name))
        async_sig = inspect.signature(getattr(asynchronous, async_name))
        # same parameters (names, kinds, defaults, annotations) and the same kind of answer
        assert [
            (p.name, p.kind, p.default, _async_spelling(p.annotation))
            for p in sync_sig.parameters.values()
        ] == [
            (p.name, p.kind, p.default, str(p.annotation)) for p in async_sig.parameters.values()
        ], sync_name
        if sync_name in ("__enter__", "__exit__"):
            continue
        returns = str(async_sig.return_annotation)
        if inspect.iscoroutinefunction(getattr(asynchronous, async_name)):
            assert returns == _async_spelling(sync_sig.return_annotation), sync_name
        else:  # a stream: the async twin is an async iterator, used with ``async for``
            assert returns.startswith("AsyncIterator["), sync_name
            assert returns == _async_spelling(sync_sig.return_annotation), sync_name


def test_the_async_client_tokenizes_like_the_sync_one() -> None:
    # the drift that prompted the twin test: AsyncClient once lacked these
    for name in ("tokenize", "detokenize", "status", "describe", "restore", "open_session"):
        assert inspect.iscoroutinefunction(getattr(modeldconn.AsyncClient, name)), name


# --- (2) no protobuf type in the public API ---------------------------------------------------

#: the one exception, and why: ``RemoteError.to_status`` is the daemon's side of the shared error
#: table (its interceptors send errors as ``google.rpc.Status``); clients never call it.
NOT_CLIENT_API = {"RemoteError.to_status"}


def _is_protobuf(leaf: object) -> bool:
    module = getattr(leaf, "__module__", "") or ""
    if module.startswith(("modeldconn._pb", "google.protobuf", "google.rpc", "google._upb")):
        return True
    return isinstance(leaf, type) and issubclass(leaf, Message)


def _leaves(hint: object) -> Iterator[object]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is not None or args:
        origin = typing.get_origin(hint)
        if origin is not None:
            yield origin
        for arg in args:
            yield from _leaves(arg)
    else:
        yield hint


def _annotated(owner: str, obj: object) -> Iterator[tuple[str, dict[str, Any]]]:
    """(qualified name, resolved type hints) for ``obj`` and, for a class, its public members."""
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) or getattr(obj, "__annotations__", None):
            yield owner, typing.get_type_hints(obj)
        for name, member in inspect.getmembers(obj):
            if name.startswith("_") and name != "__init__":
                continue
            defined_by = getattr(member, "__module__", "") or ""
            if isinstance(member, property):
                member, defined_by = member.fget, getattr(member.fget, "__module__", "")
            if not callable(member) or not defined_by.startswith("modeldconn"):
                continue  # inherited from object, Exception, enum...
            if getattr(member, "__qualname__", "") not in NOT_CLIENT_API:  # inherited ones too
                yield f"{owner}.{name}", typing.get_type_hints(member)
    elif callable(obj):
        yield owner, typing.get_type_hints(obj)


def test_no_public_function_takes_or_returns_a_protobuf_type() -> None:
    checked = 0
    for name in modeldconn.__all__:
        for qualified, hints in _annotated(name, getattr(modeldconn, name)):
            for param, hint in hints.items():
                bad = [leaf for leaf in _leaves(hint) if _is_protobuf(leaf)]
                assert not bad, f"{qualified} ({param}): {bad}"
            checked += 1
    assert checked > 100  # the walk reached the classes' methods, not just the names


def test_the_checker_sees_protobuf_types() -> None:
    def leaky(options: _types.DecodeOptions) -> pb.DecodeConfig | None:
        return None

    hints = typing.get_type_hints(leaky)
    assert [leaf for leaf in _leaves(hints["return"]) if _is_protobuf(leaf)] == [pb.DecodeConfig]


# --- (3) one decode-options type, field for field the proto's ---------------------------------


#: samples of the fields whose type is a message or a map on the wire
SPECIAL_SAMPLES: dict[str, object] = {
    "response_format": modeldconn.ResponseFormat(regex="[0-9]+"),
    "tools": (modeldconn.ToolDefinition("f", "does f", '{"type": "object"}'),),
    "logit_bias": ((3, -0.5), (7, float("-inf"))),
}


def _sample(name: str, hint: object) -> object:
    """A value of ``hint`` other than the field's default."""
    if name in SPECIAL_SAMPLES:
        return SPECIAL_SAMPLES[name]
    leaves = set(_leaves(hint)) - {type(None)}
    if typing.get_origin(hint) is Sequence or Sequence in leaves:
        return ("7", "ab") if str in leaves else (3, 4)
    for kind, value in ((bool, True), (int, 7), (float, 0.625), (str, "x")):  # exact in float32
        if kind in leaves:
            return value
    raise AssertionError(f"no sample for {hint}: teach the test this field's type")


def _names(message: type[Message]) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.fields}


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_decode_options_round_trip_every_field() -> None:
    hints = typing.get_type_hints(modeldconn.DecodeOptions)
    values = {
        f.name: _sample(f.name, hints[f.name]) for f in dataclasses.fields(modeldconn.DecodeOptions)
    }
    options = modeldconn.DecodeOptions(**values)  # type: ignore[arg-type]
    config = _convert.decode_config_to_pb(options)
    back = {}
    for field in config.DESCRIPTOR.fields:
        value = getattr(config, field.name)
        if field.name in SPECIAL_SAMPLES:
            continue  # read back below
        if field.is_repeated:
            back[field.name] = tuple(value)
        elif field.has_presence and not config.HasField(field.name):
            back[field.name] = None
        else:
            back[field.name] = value
    assert back == {k: v for k, v in values.items() if k not in SPECIAL_SAMPLES}
    assert config.response_format.regex == "[0-9]+"
    assert [(t.name, t.description, t.parameters) for t in config.tools] == [
        ("f", "does f", '{"type": "object"}')
    ]
    assert dict(config.logit_bias) == {3: -0.5, 7: float("-inf")}
    assert _convert.decode_options_from_pb(config) == options  # and the inverse, whole
    assert _convert.decode_config_to_pb(modeldconn.DecodeOptions()) == pb.DecodeConfig()


def test_every_decode_config_field_has_a_decode_options_field() -> None:
    # a sampling field added to the proto without one here (or the reverse) fails this
    assert _names(pb.DecodeConfig) == _fields(modeldconn.DecodeOptions)
    for field in pb.DecodeConfig.DESCRIPTOR.fields:
        default = modeldconn.DecodeOptions.__dataclass_fields__[field.name].default
        if field.is_repeated:
            assert default == (), field.name
        elif field.has_presence:  # optional: unset means the daemon's default
            assert default is None, field.name


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        (pb.StatusResponse, modeldconn.DaemonStatus),
        (pb.LoadedModelStatus, modeldconn.LoadedModelStatus),
        (pb.ModelFacts, modeldconn.ModelFacts),
        (pb.Capacity, modeldconn.Capacity),
        (pb.Capabilities, modeldconn.Capabilities),
        (pb.ResponseFormat, modeldconn.ResponseFormat),
        (pb.ToolDefinition, modeldconn.ToolDefinition),
        (pb.ToolCall, modeldconn.ToolCall),
        (pb.TopLogprob, modeldconn.TopLogprob),
        (pb.TokenLogprob, modeldconn.TokenLogprob),
        (pb.ChatMessages, modeldconn.Chat),
        (pb.SnapshotResponse, modeldconn.SnapshotInfo),
        (pb.EnsurePrefixResponse, modeldconn.PrefixResult),
        (pb.PrefillSuffixResponse, modeldconn.SuffixResult),
    ],
)
def test_replies_read_by_name_have_a_field_for_every_proto_field(
    message: type[Message], cls: type
) -> None:
    assert _names(message) == _fields(cls)


def test_status_is_a_plain_dataclass() -> None:
    reply = pb.StatusResponse(instance_id="i", state="serving", parks=3)
    reply.models.add(name="m", sessions=2, weights_loaded=True, decode_batch_rows=4)
    status = _convert.daemon_status_from_pb(reply)
    assert isinstance(status, modeldconn.DaemonStatus)
    assert (status.instance_id, status.state, status.parks) == ("i", "serving", 3)
    assert status.models == (modeldconn.LoadedModelStatus("m", "", "", 2, True, 4, False),)
    hash(status)  # frozen all the way down


def test_decode_options_from_keywords() -> None:
    base = modeldconn.DecodeOptions(max_tokens=8, temperature=0.5)
    merged = decode_options(base, {"max_tokens": 16, "stop": ["\n"]})
    assert merged == modeldconn.DecodeOptions(max_tokens=16, temperature=0.5, stop=("\n",))
    assert decode_options(None, {}) == modeldconn.DecodeOptions()
    assert modeldconn.DecodeOptions(stop="\n").stop == ("\n",)  # one stop string, not chars
    with pytest.raises(TypeError, match="max_tokenz"):
        decode_options(None, {"max_tokenz": 1})


def _offline_session(tmp_path: Path) -> modeldconn.Session:
    # nothing listens there: anything that dials fails, so what passes ran before any I/O
    client = modeldconn.Client(
        data_root=tmp_path, endpoint=f"unix:{tmp_path}/none.sock", wait_ready_s=0
    )
    info = _convert.session_info_from_pb(pb.OpenSessionResponse(handle="instance/session"))
    return modeldconn.Session(client, info)


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"max_tokens": -1}, modeldconn.InvalidArgument, "max_tokens=-1"),
        ({"seed": 2**64}, modeldconn.InvalidArgument, "seed"),
        ({"stop_token_ids": [2**40]}, modeldconn.InvalidArgument, "stop_token_ids"),
        ({"top_k": "many"}, modeldconn.InvalidArgument, "top_k"),
        ({"max_tokenz": 4}, TypeError, "max_tokenz"),
    ],
)
def test_bad_options_are_refused_before_anything_is_sent(
    tmp_path: Path, fields: dict[str, object], error: type[Exception], match: str
) -> None:
    session = _offline_session(tmp_path)
    with pytest.raises(error, match=match):
        session.decode(**fields)  # raised by the call itself, not on first iteration
    with pytest.raises(error, match=match):
        session.generate(modeldconn.DecodeOptions(), **fields)


# --- (4) who may import the generated code ----------------------------------------------------

#: Modules allowed to import ``modeldconn._pb``, and why (keep it short):
#: - ``modeldconn._convert``: the client's dataclasses <-> wire messages, in one place;
#: - ``modeldconn._requests``: one request (and stub) per RPC, shared by the sync/async twins;
#: - ``modeld.rpc.*``: the daemon's gRPC layer (server, servicer, its own conversions).
#: Everything else speaks in ``modeldconn._types``' dataclasses.
PB_IMPORTERS = ("modeldconn._convert", "modeldconn._requests", "modeld.rpc")


def _modules() -> Iterator[tuple[str, bool, Path]]:
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        yield ".".join(parts[:-1] if is_package else parts), is_package, path


def _imports(module: str, is_package: bool, tree: ast.AST) -> Iterator[str]:
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _imports_pb(name: str) -> bool:
    return name == "modeldconn._pb" or name.startswith("modeldconn._pb.")


def test_only_the_wire_modules_import_the_generated_code() -> None:
    importers = set()
    for module, is_package, path in _modules():
        if module == "modeldconn._pb" or module.startswith("modeldconn._pb."):
            continue  # the generated code itself
        if any(
            _imports_pb(name) for name in _imports(module, is_package, ast.parse(path.read_text()))
        ):
            importers.add(module)
    allowed = {m for m in importers if m in PB_IMPORTERS or m.startswith("modeld.rpc.")}
    assert importers == allowed, f"import modeldconn._pb only in {PB_IMPORTERS}"
    assert {"modeldconn._convert", "modeldconn._requests"} <= importers  # the scan sees them


def test_the_import_scan_resolves_relative_imports() -> None:
    tree = ast.parse("from ._pb import modeld_pb2\nfrom . import _pb\nfrom .._pb import x")
    found = list(_imports("modeldconn._x", False, tree))
    assert found.count("modeldconn._pb") == 2 and "modeldconn._pb.modeld_pb2" in found


# --- the asyncio twin against a real daemon ---------------------------------------------------

TEXT = "The quick brown fox jumps over the lazy dog."
#: the fixture's tokens for TEXT, and its greedy continuation (as in tests/contract)
TEXT_IDS = [292, 463, 456, 462, 488, 398, 264, 470, 486, 16]
EXPECTED_GREEDY = (379, 285, 419, 379, 396, 30, 508, 483, 30, 508, 483, 11)


@pytest.fixture(scope="module")
def tiny() -> Iterator[Any]:
    served = serve_tiny("llama")
    yield served
    stop_served(served)


async def test_async_client_against_a_real_daemon(tiny: Any) -> None:
    async with modeldconn.AsyncClient(data_root=tiny.root) as client:
        ids = await client.tokenize(TINY, TEXT)
        assert ids == TEXT_IDS
        text = await client.detokenize(TINY, ids)
        assert text == tiny.client.detokenize(TINY, ids)
        # many sessions opened at once share one lifeline (the attach is locked)
        sessions = await asyncio.gather(*(client.open_session(TINY) for _ in range(4)))
        status = await client.status()
        assert isinstance(status, modeldconn.DaemonStatus)
        assert status.clients_attached == 1 and status.sessions_open == 4
        assert [m.name for m in status.models] == [TINY]
        session, *others = sessions
        for other in others:
            assert await other.close()
        async with session:
            assert await session.tokenize(TEXT) == ids
            await session.ensure_prefix(ids)
            options = modeldconn.DecodeOptions(max_tokens=12, temperature=0.0)
            chunks = [chunk async for chunk in session.decode(options)]
            assert tuple(t for c in chunks for t in c.token_ids) == EXPECTED_GREEDY
            assert chunks[-1].final is not None
            assert chunks[-1].final.stop_reason == "max_tokens"
            await session.ensure_prefix(ids)
            short = await session.generate(options, max_tokens=3)  # keywords override
            assert short.token_ids == EXPECTED_GREEDY[:3]
            assert await session.detokenize(short.token_ids) == short.text
            with pytest.raises(modeldconn.InvalidArgument, match="max_tokens"):
                session.decode(options, max_tokens=-1)
    assert tiny.client.status().sessions_open == 0
