"""OpenAI's Responses API through the official openai SDK: ``previous_response_id`` continuing
the live session (and, after a daemon restart, its snapshot), streaming events, GET and DELETE,
errors (the tiny fixture), and a function tool round trip (Gemma 3 270M)."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from daemons import Served, start_served, stop_served
from http_clients import openai_client
from served_models import (
    GEMMA,
    GEMMA_FILE,
    TINY,
    TINY_FILE,
    gemma_gguf,
    require_backend,
    serve_gemma,
)

from modeldconn import Chat

INSTRUCTIONS = "You answer in one short sentence."


def _extra(response: Any) -> dict[str, Any]:
    extra: dict[str, Any] = response.model_extra["modeld"]
    return extra


def _cached(response: Any) -> int:
    usage = response.usage
    assert usage is not None
    return int(usage.input_tokens_details.cached_tokens)


@pytest.fixture(scope="module")
def tiny() -> Iterator[Served]:
    require_backend("llama")
    daemon = start_served(
        {f"{TINY}.gguf": TINY_FILE},
        "--http-listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        model=TINY,
    )
    yield daemon
    stop_served(daemon)


def test_chain_reuses_the_whole_history(tiny: Served) -> None:
    client = openai_client(tiny)
    first = client.responses.create(
        model=TINY, instructions="Be brief. " * 10, input="Hello there", max_output_tokens=5
    )
    assert first.id.startswith("resp_") and first.status == "incomplete"
    assert first.usage is not None and first.usage.output_tokens == 5
    previous = first
    for turn in range(2):
        reply = client.responses.create(
            model=TINY,
            instructions="Be brief. " * 10,
            input=f"and again, turn {turn}",
            previous_response_id=previous.id,
            max_output_tokens=5,
        )
        assert reply.previous_response_id == previous.id
        assert _extra(reply)["continued"] == "live"
        assert previous.usage is not None
        assert _cached(reply) >= previous.usage.input_tokens, (turn, reply.usage)
        previous = reply


def test_stream_events_follow_openai_sequence(tiny: Served) -> None:
    client = openai_client(tiny)
    # an incomplete response (max_output_tokens) ends with response.incomplete, as OpenAI's;
    # the SDK's accumulating parser (responses.stream) wants response.completed, so the
    # events are read raw here and through the parser in the tool test below
    events = list(
        client.responses.create(
            model=TINY, input="Tell me a story", max_output_tokens=6, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "incomplete" and final.output_text == deltas
    assert final.usage is not None and final.usage.output_tokens == 6
    # the same request, not streamed: the same greedy text; stored, so GET answers it
    whole = client.responses.create(model=TINY, input="Tell me a story", max_output_tokens=6)
    assert whole.output_text == deltas
    assert client.responses.retrieve(final.id).output_text == deltas


def test_get_and_delete(tiny: Served) -> None:
    client = openai_client(tiny)
    made = client.responses.create(model=TINY, input="Keep this", max_output_tokens=3)
    snapshot_id = _extra(made)["snapshot_id"]
    assert snapshot_id
    snap = tiny.root / "snapshots" / f"{snapshot_id}.snap"
    got = client.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == made.output_text
    assert (tiny.root / "http" / "responses.sqlite3").is_file()
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(made.id)
    assert not snap.exists()
    unstored = client.responses.create(model=TINY, input="Forget", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_unknown_previous_response_is_404(tiny: Served) -> None:
    client = openai_client(tiny)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(
            model=TINY, input="x", previous_response_id="resp_nope", max_output_tokens=1
        )
    assert missing.value.code == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=TINY, input="x", max_output_tokens=0)
    assert "max_output_tokens" in str(bad.value.param)


# -- Gemma: a restart between turns, and a tool call round trip ---------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop_keeping_root(served: Served) -> None:
    served.client.close()
    served.proc.send_signal(signal.SIGTERM)
    served.proc.wait(30)


def _cold(served: Served, messages: list[dict[str, Any]], max_tokens: int) -> str:
    """The same conversation on a fresh session of a daemon without HTTP sessions: a cold
    run."""
    with served.client.open_session(GEMMA) as session:
        assert session.ensure_prefix(Chat(messages)).reused == 0
        return session.generate(max_tokens=max_tokens, temperature=0).text


def test_chain_survives_a_restart_through_the_snapshot(tmp_path: Path) -> None:
    require_backend("llama")
    gguf = gemma_gguf()
    port = _free_port()
    listen = ("--http-listen", f"127.0.0.1:{port}", "--threads", "2")
    daemon = start_served({GEMMA_FILE: gguf}, *listen, model=GEMMA)
    root = daemon.root
    questions = [
        "What is the capital of France?",
        "Which river flows through it?",
        "Name a famous museum there.",
    ]
    history: list[dict[str, Any]] = [{"role": "system", "content": INSTRUCTIONS}]
    replies: list[Any] = []
    try:
        client = openai_client(daemon)
        for question in questions[:2]:
            reply = client.responses.create(
                model=GEMMA,
                instructions=INSTRUCTIONS,
                input=question,
                previous_response_id=replies[-1].id if replies else None,
                max_output_tokens=20,
                temperature=0,
            )
            if replies:
                assert _extra(reply)["continued"] == "live"
                assert _cached(reply) >= replies[-1].usage.input_tokens
            assert _extra(reply)["snapshot_id"], _extra(reply)
            replies.append(reply)
            history += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": reply.output_text},
            ]
        _stop_keeping_root(daemon)
        daemon = start_served({}, *listen, model=GEMMA, root=root)
        third = openai_client(daemon).responses.create(
            model=GEMMA,
            instructions=INSTRUCTIONS,
            input=questions[2],
            previous_response_id=replies[-1].id,
            max_output_tokens=20,
            temperature=0,
        )
        assert _extra(third)["continued"] == "snapshot", _extra(third)
        assert _cached(third) >= replies[-1].usage.input_tokens
        history.append({"role": "user", "content": questions[2]})
    finally:
        stop_served(daemon)
    cold = serve_gemma("llama", "--threads", "2")
    try:
        assert third.output_text == _cold(cold, history, 20)
    finally:
        stop_served(cold)


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_function_call_round_trip(gemma: Served) -> None:
    client = openai_client(gemma)
    first = client.responses.create(
        model=GEMMA,
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=64,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments).get("city"), str)
    # streamed, the same call arrives as function_call_arguments events
    with client.responses.stream(
        model=GEMMA,
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
        temperature=0,
    ) as stream:
        kinds = [e.type for e in stream]
        streamed = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    assert [i.type for i in streamed.output] == ["function_call"]
    second = client.responses.create(
        model=GEMMA,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=32,
        temperature=0,
    )
    assert second.output_text
    assert _extra(second)["continued"] == "live"
    assert first.usage is not None and _cached(second) >= first.usage.input_tokens


def test_fork_keeps_both_branches(tiny: Served) -> None:
    """Two continuations of one response: the first takes its live session on; the second (a
    fork) is restored from the response's snapshot instead of cutting the first branch's tape
    short, and both reuse the whole earlier history."""
    client = openai_client(tiny)
    root = client.responses.create(model=TINY, input="A shared beginning " * 8, max_output_tokens=4)
    assert root.usage is not None
    branches, ids = [], []
    for word in ("left", "right"):
        branch = client.responses.create(
            model=TINY, input=word, previous_response_id=root.id, max_output_tokens=4
        )
        assert _cached(branch) >= root.usage.input_tokens, (word, branch.usage)
        branches.append(_extra(branch)["continued"])
        ids.append(branch.id)
    assert branches == ["live", "snapshot"]
    # the first branch's session still ends where it did: continuing it is live
    on = client.responses.create(
        model=TINY, input="on", previous_response_id=ids[0], max_output_tokens=2
    )
    assert _extra(on)["continued"] == "live"
