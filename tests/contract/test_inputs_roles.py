"""Issue 14, kind 3: no chat message vanishes, whatever the role sequence. Gemma's template
folds system text into the next user turn and had nowhere to put it without one: such a
system message is now rendered as a user turn carrying its text."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

import pytest
from daemons import Served, stop_served
from served_models import BACKENDS, GEMMA, TINY, serve_gemma

from modeldconn import Client

SEQUENCES = {
    "system only": [("system", "SYSTEXT one")],
    "system then assistant": [("system", "SYSTEXT two"), ("assistant", "ASSTEXT two")],
    "consecutive users": [("user", "USERTEXT one"), ("user", "USERTEXT two")],
    "consecutive systems": [("system", "SYSTEXT a"), ("system", "SYSTEXT b"), ("user", "U")],
    "tool result": [("user", "USERTEXT"), ("assistant", "ASSTEXT"), ("tool", "TOOLTEXT 42")],
}


def _hash(ids: list[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(ids)}i", *ids)).hexdigest()


def _tape_text(client: Client, model: str, messages: list[tuple[str, str]]) -> str:
    """The hash of the tape a chat input makes (compared with the expected rendering's)."""
    chat = [{"role": role, "content": content} for role, content in messages]
    with client.open_session(model) as session:
        got = session.ensure_prefix(chat)
    return got.prefix_hash


@pytest.fixture(scope="module", params=BACKENDS)
def gemma(request: pytest.FixtureRequest) -> Iterator[Served]:
    daemon = serve_gemma(request.param)
    yield daemon
    stop_served(daemon)


def _gemma_expected(backend: str, messages: list[tuple[str, str]]) -> str:
    """Gemma 3's turns as each backend's template renders them (modeld's Jinja renderer on
    both): the packaged GGUF's (llama) folds system text into the next user turn (and, with
    none, it is rendered as a user turn), as llama.cpp's native Gemma renderer did; the IR's
    (openvino) gives system its own turn. A tool result without tools or calls in the chat is
    the template's own ``tool`` turn."""
    turns: list[tuple[str, str]] = []
    folded = ""
    for i, (role, content) in enumerate(messages):
        if backend == "llama" and role == "system":
            later_user = any(r not in ("system", "assistant") for r, _ in messages[i + 1 :])
            if later_user:
                folded += content
                continue
            role = "user"
        if folded and role not in ("assistant", "system"):
            content, folded = f"{folded}\n\n{content}", ""
        turns.append(("model" if role == "assistant" else role, content))
    body = "".join(f"<start_of_turn>{r}\n{c}<end_of_turn>\n" for r, c in turns)
    return body + "<start_of_turn>model\n"


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_tiny_renders_every_message(client: Client, backend: str, name: str) -> None:
    # the fixture's Qwen2.5 template writes a tool result as a user turn in <tool_response>
    messages = [
        ("user", f"<tool_response>\n{c}\n</tool_response>") if r == "tool" else (r, c)
        for r, c in SEQUENCES[name]
    ]
    body = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in messages)
    expected = client.tokenize(TINY, body + "<|im_start|>assistant\n")
    assert _tape_text(client, TINY, SEQUENCES[name]) == _hash(expected)


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_gemma_renders_every_message(gemma: Served, name: str) -> None:
    messages = SEQUENCES[name]
    text = _gemma_expected(gemma.backend, messages)
    for _, content in messages:
        assert content in text  # the expectation itself keeps every message
    expected = gemma.client.tokenize(GEMMA, text, add_special=True)
    assert _tape_text(gemma.client, GEMMA, messages) == _hash(expected), (gemma.backend, text)
