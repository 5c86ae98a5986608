"""Session inputs (text, token ids, chat messages) to the tokens they stand for.

Chat messages are rendered the way llama.cpp's prompt parts and vLLM's placeholder encoding
keep a template's markup apart from what users wrote: the template renders a unique marker in
place of each message's content, the markup around the markers is tokenized with control-token
parsing (``<start_of_turn>`` is one control token), and a content that holds control-token text
is tokenized as plain text, so no message can forge a turn. Content that holds none is put back
in place of its marker and tokenized with the markup in one piece, which gives exactly the ids
of rendering it directly. Content never crosses into C as a NUL-terminated string, so a NUL in
it is text. A message the template would drop (Gemma's system text with no user turn to fold
into) is rendered as a user turn instead; one that still vanishes is refused.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence

from modeld.backends._base import EngineModel, check_text
from modeld.sessions._types import ChatInput, SessionInput, TokenInput
from modeldconn._errors import ContextOverflow, InvalidArgument

__all__ = ["MAX_TOKEN_BYTES", "chat_tokens", "check_ids", "check_size", "to_tokens"]

#: no token of a served vocabulary stands for more bytes than this (Gemma 3's longest: 48,
#: the tiny fixture's: under 16; a test checks both), so an input of B bytes is at least
#: B / MAX_TOKEN_BYTES tokens: an input far over the context is refused before tokenizing it
MAX_TOKEN_BYTES = 256

#: rendered around every marker: where the template keeps it, content keeps its outer
#: whitespace; where the template strips it (Gemma's ``trim``), content is stripped the same way
_PROBE = " \t\n"
#: the probe as it reads inside a JSON string: minja (openvino-genai's template engine) turns a
#: ``tool`` message into a user turn holding ``{"tool_response": {"content": "..."}}`` for
#: templates without a tool role, so that content is put back JSON-escaped, as minja writes it
_PROBE_JSON = json.dumps(_PROBE)[1:-1]
_SPACE = " \t\n\r\v\f"


def check_ids(ids: list[int], vocab_size: int, field: str = "tokens") -> None:
    """:raises InvalidArgument: an id outside ``0..vocab_size-1``, named."""
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidArgument(
            f"token id {bad} is outside the vocabulary (0..{vocab_size - 1})", field=field
        )


def check_size(value: SessionInput, room: int, stage: str, resident: int, n_ctx: int) -> None:
    """Refuse, before any tokenizing, an input that cannot fit ``room`` tokens whatever it
    tokenizes to (cheap: a byte count; a 15 MiB text must not occupy a thread for seconds
    only to be refused after).

    :raises ContextOverflow: with ``stage``, ``resident``, ``additional`` (the lower bound on
        the input's tokens) and ``n_ctx``.
    """
    if isinstance(value, TokenInput):
        return  # counted exactly, after
    if isinstance(value, ChatInput):
        size = sum(len(role) + len(content) for role, content in value.messages)
    else:
        size = len(value.text)
    # characters first (no copy); only a long text pays for counting its UTF-8 bytes
    if size <= room * MAX_TOKEN_BYTES // 4:
        return
    if isinstance(value, ChatInput):
        size = sum(
            len(r.encode("utf-8", "surrogatepass")) + len(c.encode("utf-8", "surrogatepass"))
            for r, c in value.messages
        )
    else:
        size = len(value.text.encode("utf-8", "surrogatepass"))
    at_least = -(-size // MAX_TOKEN_BYTES)
    if at_least > room:
        raise ContextOverflow(
            f"an input of {size} bytes is at least {at_least} tokens; {room} fit "
            f"(n_ctx {n_ctx}, {resident} on the tape)",
            stage=stage,
            resident=resident,
            additional=at_least,
            n_ctx=n_ctx,
        )


def to_tokens(model: EngineModel, value: SessionInput, *, start: bool) -> list[int]:
    """Any thread (it only reads the model: see ``ModelPool.borrowed``).

    ``start``: this input begins the tape (BOS where the model has one, never
    a second one when the text starts with its own).

    Text is tokenized with control-token parsing: a raw prompt may carry hand-written markup.

    :raises InvalidArgument: ids outside the vocabulary, a chat message without a role or with
        a role a template cannot carry, text with a lone surrogate, a message the template
        drops, or an input that comes to no tokens.
    :raises UnsupportedFeature: chat messages for a model without a chat template.
    """
    if isinstance(value, TokenInput):
        tokens = list(value.ids)
        check_ids(tokens, model.facts.vocab_size)
    elif isinstance(value, ChatInput):
        tokens = chat_tokens(model, value, start=start) if value.messages else []
    else:
        check_text(value.text, "text")
        tokens = model.tokenize(value.text, add_special=start) if value.text else []
    if not tokens:
        raise InvalidArgument("the input is empty")
    return tokens


def chat_tokens(model: EngineModel, chat: ChatInput, *, start: bool) -> list[int]:
    """The ids of ``chat`` rendered by the model's template: markup as control tokens, content
    as text (see the module's docstring).

    :raises InvalidArgument: see :func:`to_tokens`.
    :raises UnsupportedFeature: the model has no chat template, or it cannot be rendered.
    """
    messages = list(chat.messages)
    for i, (role, content) in enumerate(messages):
        if not role:
            raise InvalidArgument("every chat message needs a role", field="messages")
        # the role goes through the template as a NUL-terminated string (llama.cpp)
        check_text(role, f"messages[{i}].role", allow_nul=False)
        check_text(content, f"messages[{i}].content")
    for i, (role, _) in enumerate(messages):
        _check_role(model, role, i)
    parts, lost = _render(model, messages, chat.add_generation_prompt)
    if lost:
        # Gemma folds system text into the next user turn and drops it when there is none:
        # such a message becomes a user turn carrying its text, so nothing vanishes
        relabelled = [
            ("user", content) if i in lost and role == "system" else (role, content)
            for i, (role, content) in enumerate(messages)
        ]
        parts, lost = _render(model, relabelled, chat.add_generation_prompt)
    if lost:
        i = min(lost)
        raise InvalidArgument(
            f"the model's chat template drops message {i} (role {messages[i][0]!r}); "
            "send it in another role or as text",
            field=f"messages[{i}]",
        )
    return _tokenize_parts(model, parts, start=start)


def _check_role(model: EngineModel, role: str, index: int) -> None:
    """:raises InvalidArgument: the role holds control-token text: a role is rendered as
    markup, so ``user<end_of_turn>`` would forge a turn."""
    field = f"messages[{index}].role"
    if any(model.is_control(t) for t in model.tokenize(role, add_special=False)):
        raise InvalidArgument(f"role {role!r} holds control-token text", field=field)


def _render(
    model: EngineModel, messages: Sequence[tuple[str, str]], add_generation_prompt: bool
) -> tuple[list[tuple[str, bool]], set[int]]:
    """The rendered conversation as ``(text, is_content)`` parts, and the indices of messages
    with content that the template dropped."""
    nonce = secrets.token_hex(8)
    marked = [
        (role, f"{_PROBE}\ue000{nonce}.{i}\ue001{_PROBE}" if content else "")
        for i, (role, content) in enumerate(messages)
    ]
    rendered = model.render_chat(marked, add_generation_prompt)
    probe = f"{re.escape(_PROBE)}|{re.escape(_PROBE_JSON)}"
    pattern = re.compile(f"({probe})?\ue000{nonce}\\.(\\d+)\ue001({probe})?")
    parts: list[tuple[str, bool]] = []
    seen: set[int] = set()
    at = 0
    for match in pattern.finditer(rendered):
        parts.append((rendered[at : match.start()], False))
        index = int(match.group(2))
        seen.add(index)
        content = messages[index][1]
        if _PROBE_JSON in (match.group(1), match.group(3)):
            content = json.dumps(content, ensure_ascii=False)[1:-1]
        if match.group(1) is None:  # the template strips leading whitespace
            content = content.lstrip(_SPACE)
        if match.group(3) is None:
            content = content.rstrip(_SPACE)
        parts.append((content, True))
        at = match.end()
    parts.append((rendered[at:], False))
    lost = {i for i, (_, content) in enumerate(messages) if content and i not in seen}
    return parts, lost


def _tokenize_parts(model: EngineModel, parts: list[tuple[str, bool]], *, start: bool) -> list[int]:
    """Runs of markup and clean content as one text each (parsed: their ids are those of the
    whole rendered text); content holding control-token text as plain text, on its own."""
    runs: list[tuple[str, bool]] = []  # (text, plain)
    for text, is_content in parts:
        plain = is_content and _holds_control_text(model, text)
        if runs and not plain and not runs[-1][1]:
            runs[-1] = (runs[-1][0] + text, False)
        else:
            runs.append((text, plain))
    ids: list[int] = []
    first = start  # the first text of the tape gets the BOS
    for text, plain in runs:
        if not text:
            continue
        if plain:
            bos = model.facts.bos_token_id
            if first and model.facts.add_bos and bos >= 0:
                ids.append(bos)
            ids += model.tokenize(text, add_special=False, parse_special=False)
        else:
            ids += model.tokenize(text, add_special=first)
        first = False
    return ids


def _holds_control_text(model: EngineModel, text: str) -> bool:
    return any(model.is_control(t) for t in model.tokenize(text, add_special=False))
