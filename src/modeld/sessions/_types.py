"""Plain domain types that cross the servicer/session boundary (the servicer converts them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from modeld.backends._base import SamplingParams
from modeldconn._errors import InvalidArgument
from modeldconn._types import DecodeFinal

__all__ = [
    "ChatInput",
    "DecodeRequest",
    "DecodeStep",
    "SessionInput",
    "TextInput",
    "TokenInput",
]

MAX_STOP_STRINGS = 16
MAX_STOP_TOKENS = 64
MAX_STOP_CHARS = 256
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class TextInput:
    text: str


@dataclass(frozen=True)
class TokenInput:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class ChatInput:
    messages: tuple[tuple[str, str], ...]  #: (role, content)
    add_generation_prompt: bool


SessionInput = TextInput | TokenInput | ChatInput


@dataclass(frozen=True)
class DecodeRequest:
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    stop_token_ids: frozenset[int] = frozenset()

    @classmethod
    def checked(
        cls,
        *,
        max_tokens: int | None,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        min_p: float | None,
        repeat_penalty: float | None,
        repeat_last_n: int | None,
        seed: int | None,
        stop: tuple[str, ...],
        ignore_eos: bool,
        stop_token_ids: tuple[int, ...] = (),
    ) -> DecodeRequest:
        """Apply defaults and refuse out-of-range values with invalid_argument."""

        def bad(field: str, value: object, rule: str) -> InvalidArgument:
            return InvalidArgument(f"{field}={value!r}: {rule}", field=field)

        temp = 0.0 if temperature is None else temperature
        if not math.isfinite(temp):
            raise bad("temperature", temp, "must be finite (<= 0 means greedy)")
        k = 40 if top_k is None else top_k
        if k < 0:
            raise bad("top_k", k, "must be >= 0 (0 = off)")
        p = 0.95 if top_p is None else top_p
        if not (math.isfinite(p) and 0 < p <= 1):
            raise bad("top_p", p, "must be in (0, 1]")
        mp = 0.05 if min_p is None else min_p
        if not (math.isfinite(mp) and 0 <= mp <= 1):
            raise bad("min_p", mp, "must be in [0, 1]")
        penalty = 1.0 if repeat_penalty is None else repeat_penalty
        if not (math.isfinite(penalty) and 0 < penalty <= 10):
            raise bad("repeat_penalty", penalty, "must be in (0, 10] (1 = off)")
        last_n = 64 if repeat_last_n is None else repeat_last_n
        if last_n < -1:
            raise bad("repeat_last_n", last_n, "must be >= -1 (-1 = whole context)")
        limit = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        if limit < 1:
            raise bad("max_tokens", limit, "must be >= 1")
        if len(stop) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in stop):
            raise bad(
                "stop",
                stop,
                f"at most {MAX_STOP_STRINGS} non-empty strings of "
                f"at most {MAX_STOP_CHARS} characters",
            )
        if len(stop_token_ids) > MAX_STOP_TOKENS or any(t < 0 for t in stop_token_ids):
            raise bad("stop_token_ids", stop_token_ids, f"at most {MAX_STOP_TOKENS} ids >= 0")
        sampling = SamplingParams(
            temperature=temp,
            top_k=k,
            top_p=p,
            min_p=mp,
            repeat_penalty=penalty,
            repeat_last_n=last_n,
            seed=seed,
            ignore_eos=ignore_eos,
        )
        return cls(
            max_tokens=limit,
            sampling=sampling,
            stop=stop,
            stop_token_ids=frozenset(stop_token_ids),
        )


@dataclass(frozen=True)
class DecodeStep:
    text: str
    token_ids: tuple[int, ...]
    final: DecodeFinal | None = None
