"""`modeld generate`'s issue-16 options and its --json shape, against a fake session (no
daemon): what the options send, what the JSON holds, and which mistakes are usage errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import modeldconn
from modeld.cli import _commands
from modeld.cli._group import cli

FINAL = modeldconn.DecodeFinal(
    stop_reason="tool_calls",
    stop_string="",
    prompt_tokens=40,
    reused_tokens=12,
    completion_tokens=6,
    prefill_ms=1.0,
    ttft_ms=2.0,
    decode_ms=3.0,
    tokens_per_s=100.0,
    resident=45,
    available=979,
    thinking_tokens=2,
)
CALL = modeldconn.ToolCall("call_1", "get_weather", '{"city": "Paris"}', 0)
CHUNKS = [
    modeldconn.DecodeChunk(
        "",
        (10, 11),
        thinking="Hmm.",
        logprobs=(
            modeldconn.TokenLogprob(10, -0.5, b"Hm", (modeldconn.TopLogprob(10, -0.5, b"Hm"),)),
            modeldconn.TokenLogprob(
                11, -1.5, b"\xe2\x82", (modeldconn.TopLogprob(12, -0.25, b"\xe2\x82\xac"),)
            ),
        ),
    ),
    modeldconn.DecodeChunk("Calling.", (12,)),
    modeldconn.DecodeChunk("", (13, 14, 15), final=FINAL, tool_calls=(CALL,)),
]


class FakeSession:
    def __init__(self, sent: dict[str, Any]) -> None:
        self.sent = sent

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def ensure_prefix(self, prefix: modeldconn.Chat | str) -> None:
        self.sent["prefix"] = prefix

    def decode(self, options: modeldconn.DecodeOptions) -> Iterator[modeldconn.DecodeChunk]:
        self.sent["options"] = options
        return iter(CHUNKS)

    def generate(self, options: modeldconn.DecodeOptions) -> modeldconn.Completion:
        self.sent["options"] = options
        return modeldconn.Completion(
            "Calling.",
            (10, 11, 12, 13, 14, 15),
            FINAL,
            thinking="Hmm.",
            tool_calls=(CALL,),
            logprobs=CHUNKS[0].logprobs,
        )


class FakeClient:
    def __init__(self) -> None:
        self.sent: dict[str, Any] = {}

    def open_session(self, model: str, *, n_ctx: int = 0, kv_cache_type: str = "") -> FakeSession:
        self.sent["model"] = model
        self.sent["kv_cache_type"] = kv_cache_type
        return FakeSession(self.sent)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()
    monkeypatch.setattr(_commands, "_client_orfail", lambda data_root: fake)
    return fake


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["generate", "m", "What is the weather?", *args])


def _write(path: Path, value: Any) -> str:
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return str(path)


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def test_json_prints_one_object_with_every_channel(client: FakeClient, tmp_path: Path) -> None:
    tool = _write(tmp_path / "tool.json", {"name": "get_weather", "parameters": SCHEMA})
    result = _run("--tool", tool, "--tool-choice", "required", "--logprobs", "1", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # exactly one JSON object, nothing else
    assert document == {
        "text": "Calling.",
        "token_ids": [10, 11, 12, 13, 14, 15],
        "stop_reason": "tool_calls",
        "stop_string": "",
        "tool_calls": [
            {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}', "index": 0}
        ],
        "thinking": "Hmm.",
        "logprobs": [
            {
                "id": 10,
                "logprob": -0.5,
                "piece": "Hm",
                "top": [{"id": 10, "logprob": -0.5, "piece": "Hm"}],
            },
            {
                "id": 11,
                "logprob": -1.5,
                "piece": "\ufffd",  # half a character, replaced
                "top": [{"id": 12, "logprob": -0.25, "piece": "\u20ac"}],
            },
        ],
        "usage": {
            "prompt_tokens": 40,
            "completion_tokens": 6,
            "thinking_tokens": 2,
            "reused_tokens": 12,
        },
    }
    options = client.sent["options"]
    assert options.tools == (modeldconn.ToolDefinition("get_weather", "", SCHEMA),)
    assert options.tool_choice == "required" and options.logprobs == 1
    prefix = client.sent["prefix"]  # tools imply a chat, whose template renders them
    assert isinstance(prefix, modeldconn.Chat) and prefix.tools == options.tools
    assert list(prefix.messages) == [{"role": "user", "content": "What is the weather?"}]


@pytest.mark.parametrize(
    ("args", "kind", "value"),
    [
        (["--regex", r"\d{4}-\d{2}-\d{2}"], "regex", r"\d{4}-\d{2}-\d{2}"),
        (["--json-object"], "json_object", True),
        (["--json-schema", "@schema.json"], "json_schema", json.dumps(SCHEMA)),
        (["--grammar", "@grammar.lark"], "lark", "start: /[0-9]+/"),
        (["--gbnf", "@grammar.gbnf"], "gbnf", "root ::= [0-9]+"),
    ],
)
def test_each_response_format_option(
    client: FakeClient, tmp_path: Path, args: list[str], kind: str, value: object
) -> None:
    _write(tmp_path / "schema.json", SCHEMA)
    _write(tmp_path / "grammar.lark", "start: /[0-9]+/")
    _write(tmp_path / "grammar.gbnf", "root ::= [0-9]+")
    args = [str(tmp_path / a[1:]) if a.startswith("@") else a for a in args]
    result = _run(*args, "--json")
    assert result.exit_code == 0, result.output
    options = client.sent["options"]
    assert options.response_format.kind == kind
    assert getattr(options.response_format, kind) == value
    assert client.sent["prefix"] == "What is the weather?"  # no chat unless asked


def test_thinking_options_make_a_chat(client: FakeClient) -> None:
    result = _run("--no-think", "--system", "Be brief.", "--thinking-budget", "32", "--json")
    assert result.exit_code == 0, result.output
    prefix = client.sent["prefix"]
    assert isinstance(prefix, modeldconn.Chat) and prefix.enable_thinking is False
    assert [m["role"] for m in prefix.messages] == ["system", "user"]
    assert client.sent["options"].thinking_budget == 32
    assert _run("--think", "--json").exit_code == 0
    assert client.sent["prefix"].enable_thinking is True
    assert _run("--chat", "--json").exit_code == 0
    assert client.sent["prefix"].enable_thinking is None


def test_streaming_keeps_stdout_for_the_answer(client: FakeClient) -> None:
    result = _run("--logprobs", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == 'Calling.[tool_call 0] get_weather {"city": "Paris"}\n\n'
    assert "Hmm." in result.stderr and "6 tokens, tool_calls" in result.stderr
    assert "-0.5000" in result.stderr  # a line a token


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--regex", "a", "--json-object"], "exclude each other"),
        (["--tool-choice", "required"], "--tool-choice needs --tool"),
        (["--json-schema", "@bad.json"], "not JSON"),
        (["--tool", "@nameless.json"], "--tool"),
        (["--tool", "@tool.json", "--regex", "a"], "--tool excludes"),
        (["--json-schema", "@missing.json"], "does not exist"),
        (["--logprobs", "21"], "--logprobs"),
    ],
)
def test_mistakes_are_usage_errors(
    client: FakeClient, tmp_path: Path, args: list[str], message: str
) -> None:
    _write(tmp_path / "bad.json", "{not json")
    _write(tmp_path / "nameless.json", {"description": "no name"})
    _write(tmp_path / "tool.json", {"name": "f"})
    args = [str(tmp_path / a[1:]) if a.startswith("@") else a for a in args]
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "options" not in client.sent  # refused before anything was sent


def test_a_daemon_error_stays_one_typed_line(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: FakeSession, options: modeldconn.DecodeOptions) -> modeldconn.Completion:
        raise modeldconn.InvalidArgument(
            "response_format.regex: unclosed group", field="response_format.regex"
        )

    monkeypatch.setattr(FakeSession, "generate", refuse)
    result = _run("--regex", "(", "--json")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr == "modeld: invalid_argument: response_format.regex: unclosed group\n"
