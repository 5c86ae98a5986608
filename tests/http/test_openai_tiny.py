"""The OpenAI-compatible HTTP API on the tiny qwen2 fixture, through the official openai SDK:
streaming, binding, the cache-bust diagnostics and the error mapping (behaviour that needs no
real model)."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from daemons import Served, start_served, stop_served
from http_clients import http_url, openai_client
from served_models import TINY, TINY_FILE, require_backend

SYSTEM = "You are a careful assistant. " * 6


def _extra(response: Any) -> dict[str, Any]:
    extra: dict[str, Any] = response.model_extra["modeld"]
    return extra


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_stream_with_usage(tiny: Served) -> None:
    client = openai_client(tiny)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
    stream = client.chat.completions.create(
        model=TINY,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    # the same turn, not streamed: the same text (greedy), all of the prompt reused
    whole = client.chat.completions.create(
        model=TINY,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
    )
    assert whole.choices[0].message.content == text
    assert whole.usage is not None and whole.usage.prompt_tokens_details is not None
    assert whole.usage.prompt_tokens_details.cached_tokens >= chunks[-1].usage.prompt_tokens - 1


def test_interleaved_conversations_never_cross(tiny: Served) -> None:
    """Two conversations with the same system prompt, turns alternating, bound implicitly:
    each turn continues its own conversation's session (reusing at least its previous
    prompt), never the other's."""
    client = openai_client(tiny)
    histories: dict[str, list[dict[str, str]]] = {
        name: [{"role": "system", "content": SYSTEM}] for name in ("a", "b")
    }
    previous: dict[str, int] = {}
    for turn in range(3):
        for name, history in histories.items():
            history.append({"role": "user", "content": f"conversation {name}, turn {turn}"})
            reply = client.chat.completions.create(
                model=TINY,
                messages=history,  # type: ignore[arg-type]
                max_tokens=4,
                temperature=0,
            )
            usage = reply.usage
            assert usage is not None and usage.prompt_tokens_details is not None
            cached = usage.prompt_tokens_details.cached_tokens or 0
            if name in previous:
                assert _extra(reply)["binding"] == "prefix"
                assert cached >= previous[name], (name, turn)
            previous[name] = usage.prompt_tokens
            history.append({"role": "assistant", "content": reply.choices[0].message.content or ""})


def test_session_id_header_binds_by_name(tiny: Served) -> None:
    client = openai_client(tiny)
    messages = [{"role": "user", "content": "named " * 40}]
    for expected in ("new", "x-session-id"):
        raw = client.chat.completions.with_raw_response.create(
            model=TINY,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=2,
            extra_headers={"x-session-id": "my-conversation"},
        )
        assert _extra(raw.parse())["binding"] == expected
        assert int(raw.headers["x-modeld-reused-tokens"]) >= 0


def test_divergence_reports_the_changed_date_line(tiny: Served) -> None:
    client = openai_client(tiny)

    def ask(date: str) -> Any:
        system = f"Today is {date}.\n" + "Follow the house rules carefully. " * 20
        return client.chat.completions.with_raw_response.create(
            model=TINY,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": "What day is it?"},
            ],
            max_tokens=2,
        )

    ask("2031-03-04")
    changed = ask("2031-03-05")
    divergence = _extra(changed.parse())["divergence"]
    assert divergence is not None
    # the prompt is the same up to the day's digit: that is where it diverged
    assert "2031-03-0" in divergence["before"] + divergence["after"]
    assert divergence["after"].startswith("5") or "5" in divergence["after"][:3]
    header = changed.headers["x-modeld-divergence"]
    assert header.startswith(f"{divergence['position']};")
    assert "\n" not in header and " " not in header.split(";", 1)[1].strip().replace(" ", "")
    reused = int(changed.headers["x-modeld-reused-tokens"])
    assert reused <= divergence["position"]


def test_errors(tiny: Served) -> None:
    client = openai_client(tiny)
    url = http_url(tiny)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as overflow:
        client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "word " * 5000}], max_tokens=1
        )
    assert overflow.value.code == "context_length_exceeded"
    assert "2048" in overflow.value.message
    status, body = _post(f"{url}/v1/chat/completions", b'{"model": "tiny", "messages": [')
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = _post(
        f"{url}/v1/chat/completions",
        json.dumps(
            {"model": TINY, "messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"}
        ).encode(),
    )
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body = _post(
        f"{url}/v1/chat/completions",
        json.dumps(
            {"model": TINY, "messages": [{"role": "user", "content": "x"}], "n": 2}
        ).encode(),
    )
    assert status == 400 and body["error"]["param"] == "n"
    status, body = _post(
        f"{url}/v1/chat/completions",
        json.dumps(
            {"model": TINY, "messages": [{"role": "user", "content": "x"}], "top_p": 7}
        ).encode(),
    )
    assert status == 400 and body["error"]["param"] == "top_p", body


def test_completions_and_models(tiny: Served) -> None:
    client = openai_client(tiny)
    assert TINY in [m.id for m in client.models.list()]
    done = client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=3)
    assert done.choices[0].finish_reason == "length" and done.usage is not None
    assert done.usage.completion_tokens == 3
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=TINY, prompt="Once upon a time", max_tokens=3, stream=True
        )
        if c.choices
    )
    assert streamed == done.choices[0].text


def test_non_loopback_listener_wants_the_token() -> None:
    require_backend("llama")
    token = "t0ken-" + "x" * 20
    folder = Path(tempfile.mkdtemp(prefix="mdh-"))
    token_file = folder / "token"
    token_file.write_text(token)
    os.chmod(token_file, 0o600)
    served = start_served(
        {f"{TINY}.gguf": TINY_FILE},
        "--http-listen",
        "0.0.0.0:0",
        "--auth-token-file",
        str(token_file),
        model=TINY,
    )
    try:
        served.client = served.client.__class__(data_root=served.root, auth_token=token)
        url = http_url(served)
        with pytest.raises(openai.AuthenticationError):
            openai_client(served, api_key="wrong-token-wrong-token").models.list()
        status, body = _post(f"{url}/v1/completions", b'{"model": "tiny", "prompt": "x"}')
        assert status == 401 and body["error"]["code"] == "unauthenticated"
        assert [m.id for m in openai_client(served, api_key=token).models.list()]
        status, _ = _post(
            f"{url}/v1/completions",
            b'{"model": "tiny", "prompt": "x", "max_tokens": 1}',
            {"x-api-key": token},
        )
        assert status == 200
    finally:
        stop_served(served)
        token_file.unlink()
        folder.rmdir()


def test_the_lease_advertises_the_http_api(tiny: Served) -> None:
    """Clients (and people) find the HTTP API where they find the daemon: in its lease."""
    from daemons import lease_json, run_modeld

    url = lease_json(tiny.root)["http_endpoint"]
    assert url.startswith("http://127.0.0.1:") and url in tiny.log.read_text()
    shown = run_modeld("lease", "show", "--data-root", str(tiny.root))
    assert f"http api     {url}" in shown.stdout
    status = run_modeld("status", "--data-root", str(tiny.root))
    assert f"http api   {url}" in status.stdout
