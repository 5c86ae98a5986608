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

Templates are rendered by :mod:`modeld.chat` (Jinja2, sandboxed) on both backends. The other
texts a template writes as markup (tool definitions, tool calls, tool call ids and names,
thinking) cannot be kept apart that way, so one that holds control-token text is refused. A
chat with tools for a template without tool support takes the fallback rendering
(:mod:`modeld.chat._fallback`): its tool text then travels as message content, markers and all.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Iterator, Sequence

from modeld.backends._base import EngineModel, check_text
from modeld.chat import (
    ChatInput,
    Message,
    ToolDefinition,
    apply_fallback,
    check_tools,
    render_template,
    renders_tools,
)
from modeld.sessions._types import SessionInput, TokenInput
from modeldconn._errors import ContextOverflow, InvalidArgument, UnsupportedFeature

__all__ = [
    "MAX_TOKEN_BYTES",
    "chat_tokens",
    "check_ids",
    "check_size",
    "to_tokens",
    "to_tokens_rendered",
]

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
        size = sum(len(text) for text in _chat_texts(value))
    else:
        size = len(value.text)
    # characters first (no copy); only a long text pays for counting its UTF-8 bytes
    if size <= room * MAX_TOKEN_BYTES // 4:
        return
    if isinstance(value, ChatInput):
        size = sum(len(text.encode("utf-8", "surrogatepass")) for text in _chat_texts(value))
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


def _chat_texts(chat: ChatInput) -> Iterator[str]:
    """Every text of a chat input that the rendering writes (for the size bound)."""
    for tool in chat.tools:
        yield from (tool.name, tool.description, tool.parameters)
    for m in chat.messages:
        yield from (m.role, m.content, m.tool_call_id, m.name, m.thinking)
        for call in m.tool_calls:
            yield from (call.id, call.name, call.arguments)


def to_tokens(model: EngineModel, value: SessionInput, *, start: bool) -> list[int]:
    """Any thread (it only reads the model: see ``ModelPool.borrowed``).

    ``start``: this input begins the tape (BOS where the model has one, never
    a second one when the text starts with its own).

    Text is tokenized with control-token parsing: a raw prompt may carry hand-written markup.

    :raises InvalidArgument: ids outside the vocabulary, a chat message without a role or with
        a role a template cannot carry, text with a lone surrogate, a message the template
        drops, a tool definition or call that is malformed or holds control-token text, a
        template's ``raise_exception``, or an input that comes to no tokens.
    :raises UnsupportedFeature: chat messages for a model without a chat template, or one that
        does not compile or render.
    """
    return to_tokens_rendered(model, value, start=start)[0]


def to_tokens_rendered(
    model: EngineModel, value: SessionInput, *, start: bool
) -> tuple[list[int], str]:
    """:func:`to_tokens`, and how a chat input was rendered: ``"template"`` (the model's
    template rendered everything), ``"fallback"`` (tools through the fallback rendering), or
    ``""`` for text and token ids."""
    rendering = ""
    if isinstance(value, TokenInput):
        tokens = list(value.ids)
        check_ids(tokens, model.facts.vocab_size)
    elif isinstance(value, ChatInput):
        tokens, rendering = chat_tokens(model, value, start=start) if value.messages else ([], "")
    else:
        check_text(value.text, "text")
        tokens = model.tokenize(value.text, add_special=start) if value.text else []
    if not tokens:
        raise InvalidArgument("the input is empty")
    return tokens, rendering


def chat_tokens(model: EngineModel, chat: ChatInput, *, start: bool) -> tuple[list[int], str]:
    """The ids of ``chat`` rendered by the model's template (markup as control tokens, content
    as text: see the module's docstring), and the rendering (``template`` | ``fallback``).

    :raises InvalidArgument: see :func:`to_tokens`.
    :raises UnsupportedFeature: the model has no chat template, or it cannot be rendered.
    """
    for i, message in enumerate(chat.messages):
        if not message.role:
            raise InvalidArgument("every chat message needs a role", field="messages")
        # a role selects template behaviour: one with a NUL is refused (as llama.cpp's template
        # API, which took NUL-terminated strings, always did)
        check_text(message.role, f"messages[{i}].role", allow_nul=False)
        check_text(message.content, f"messages[{i}].content")
    check_tools(chat.tools)
    template = model.facts.chat_template
    if not template:
        raise UnsupportedFeature("this model has no chat template; send text or token ids")
    _check_markup_fields(model, chat)
    for i, message in enumerate(chat.messages):
        _check_role(model, message.role, i)
    messages: Sequence[Message] = chat.messages
    origin: Sequence[int] = range(len(messages))
    tools = chat.tools
    rendering = "template"
    if chat.uses_tools and not renders_tools(template):
        messages, origin = apply_fallback(chat, template)
        tools, rendering = (), "fallback"
    parts, lost = _render(model, template, messages, chat, tools)
    if lost:
        # Gemma folds system text into the next user turn and drops it when there is none:
        # such a message becomes a user turn carrying its text, so nothing vanishes
        messages = [
            dataclasses.replace(m, role="user") if i in lost and m.role == "system" else m
            for i, m in enumerate(messages)
        ]
        parts, lost = _render(model, template, messages, chat, tools)
    if lost:
        i = min(lost)
        field = f"messages[{origin[i]}]" if origin[i] >= 0 else "tools"
        raise InvalidArgument(
            f"the model's chat template drops message {origin[i]} (role {messages[i].role!r}); "
            "send it in another role or as text",
            field=field,
        )
    return _tokenize_parts(model, parts, start=start), rendering


def _check_markup_fields(model: EngineModel, chat: ChatInput) -> None:
    """:raises InvalidArgument: a text the template writes as markup (not through a content
    marker) that holds a lone surrogate or control-token text, naming its field."""
    fields: list[tuple[str, str]] = []
    for i, tool in enumerate(chat.tools):
        fields += [(tool.description, f"tools[{i}].description")]
        fields += [(tool.parameters, f"tools[{i}].parameters")]
    for i, m in enumerate(chat.messages):
        for j, call in enumerate(m.tool_calls):
            at = f"messages[{i}].tool_calls[{j}]"
            fields += [(call.id, f"{at}.id"), (call.name, f"{at}.name")]
            fields += [(call.arguments, f"{at}.arguments")]
        fields += [(m.tool_call_id, f"messages[{i}].tool_call_id"), (m.name, f"messages[{i}].name")]
        fields += [(m.thinking, f"messages[{i}].thinking")]
    for text, field in fields:
        if not text:
            continue
        check_text(text, field)
        if _holds_control_text(model, text):
            raise InvalidArgument(
                f"{field} holds control-token text (it is rendered as markup)", field=field
            )


def _check_role(model: EngineModel, role: str, index: int) -> None:
    """:raises InvalidArgument: the role holds control-token text: a role is rendered as
    markup, so ``user<end_of_turn>`` would forge a turn."""
    field = f"messages[{index}].role"
    if any(model.is_control(t) for t in model.tokenize(role, add_special=False)):
        raise InvalidArgument(f"role {role!r} holds control-token text", field=field)


def _eos_text(model: EngineModel, template: str) -> str:
    """The EOS token's text, for templates that write ``eos_token`` (only they pay for it)."""
    eos = model.facts.eos_token_ids
    if "eos_token" not in template or not eos:
        return ""
    return model.detokenize([eos[0]])


def _render(
    model: EngineModel,
    template: str,
    messages: Sequence[Message],
    chat: ChatInput,
    tools: Sequence[ToolDefinition],
) -> tuple[list[tuple[str, bool]], set[int]]:
    """The rendered conversation as ``(text, is_content)`` parts, and the indices of messages
    with content that the template dropped.

    ``bos_token`` renders as empty: the tape's BOS is the tokenizer's, added where the input
    starts the tape (a template's BOS in a suffix would put one mid-tape).
    """
    nonce = secrets.token_hex(8)
    marked = [
        dataclasses.replace(
            m, content=f"{_PROBE}\ue000{nonce}.{i}\ue001{_PROBE}" if m.content else ""
        )
        for i, m in enumerate(messages)
    ]
    rendered = render_template(
        template,
        marked,
        add_generation_prompt=chat.add_generation_prompt,
        tools=tools,
        enable_thinking=chat.enable_thinking,
        bos_token="",
        eos_token=_eos_text(model, template),
    )
    probe = f"{re.escape(_PROBE)}|{re.escape(_PROBE_JSON)}"
    pattern = re.compile(f"({probe})?\ue000{nonce}\\.(\\d+)\ue001({probe})?")
    parts: list[tuple[str, bool]] = []
    seen: set[int] = set()
    at = 0
    for match in pattern.finditer(rendered):
        parts.append((rendered[at : match.start()], False))
        index = int(match.group(2))
        seen.add(index)
        content = messages[index].content
        if _PROBE_JSON in (match.group(1), match.group(3)):
            content = json.dumps(content, ensure_ascii=False)[1:-1]
        if match.group(1) is None:  # the template strips leading whitespace
            content = content.lstrip(_SPACE)
        if match.group(3) is None:
            content = content.rstrip(_SPACE)
        parts.append((content, True))
        at = match.end()
    parts.append((rendered[at:], False))
    lost = {i for i, m in enumerate(messages) if m.content and i not in seen}
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
