"""Session inputs (text, token ids, chat messages) to the tokens they stand for."""

from __future__ import annotations

from modeld.backends._base import EngineModel
from modeld.sessions._types import ChatInput, SessionInput, TokenInput
from modeldconn._errors import InvalidArgument

__all__ = ["check_ids", "to_tokens"]


def check_ids(ids: list[int], vocab_size: int, field: str = "tokens") -> None:
    """:raises InvalidArgument: an id outside ``0..vocab_size-1``, named."""
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidArgument(
            f"token id {bad} is outside the vocabulary (0..{vocab_size - 1})", field=field
        )


def to_tokens(model: EngineModel, value: SessionInput, *, start: bool) -> list[int]:
    """Engine thread. ``start``: this input begins the tape (BOS where the model has one).

    :raises InvalidArgument: ids outside the vocabulary, a chat message without a role, or an
        input that comes to no tokens.
    :raises UnsupportedFeature: chat messages for a model without a chat template.
    """
    if isinstance(value, TokenInput):
        tokens = list(value.ids)
        check_ids(tokens, model.facts.vocab_size)
    elif isinstance(value, ChatInput):
        if any(not role for role, _ in value.messages):
            raise InvalidArgument("every chat message needs a role", field="messages")
        text = (
            model.render_chat(value.messages, value.add_generation_prompt) if value.messages else ""
        )
        tokens = model.tokenize(text, add_special=start) if text else []
    else:
        tokens = model.tokenize(value.text, add_special=start) if value.text else []
    if not tokens:
        raise InvalidArgument("the input is empty")
    return tokens
