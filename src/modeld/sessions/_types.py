"""Plain domain types that cross the servicer/session boundary (the servicer converts them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from modeld.backends._base import SamplingParams, rule
from modeld.chat._types import MAX_TOOLS, ChatInput, ToolCall, ToolDefinition
from modeld.structured._formats import ResponseFormat
from modeldconn._errors import InvalidArgument
from modeldconn._types import DecodeFinal, TokenLogprob

__all__ = [
    "ChatInput",
    "DecodeOptions",
    "DecodeStep",
    "ResolvedConfig",
    "SessionInput",
    "TextInput",
    "TokenInput",
]

MAX_STOP_STRINGS = 16
MAX_STOP_TOKENS = 64
MAX_STOP_CHARS = 256
DEFAULT_MAX_TOKENS = 256
MAX_LOGPROBS = 20
#: the tool-call syntaxes ``modeld.chat`` parses and ``modeld.structured`` enforces
TOOL_CALL_FORMATS = ("hermes", "llama3", "mistral", "generic")


@dataclass(frozen=True)
class TextInput:
    text: str


@dataclass(frozen=True)
class TokenInput:
    ids: tuple[int, ...]


SessionInput = TextInput | TokenInput | ChatInput


def _stop_strings(value: tuple[str, ...]) -> bool:
    return len(value) <= MAX_STOP_STRINGS and all(0 < len(s) <= MAX_STOP_CHARS for s in value)


def _stop_ids(value: frozenset[int]) -> bool:
    return len(value) <= MAX_STOP_TOKENS and all(t >= 0 for t in value)


T = TypeVar("T")


def checked(cls: type[T], values: Mapping[str, object]) -> T:
    """``cls`` (a dataclass) from the ``values`` given by field name, defaults for the rest.

    Values are coerced to the field's default's collection type (tuple, frozenset), then each
    field's ``rule`` (see ``backends._base.rule``) is checked.

    :raises InvalidArgument: a value outside its field's rule, naming the field.
    """
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in values:
            continue
        value = values[f.name]
        if isinstance(f.default, (tuple, frozenset)) and isinstance(value, Iterable):
            value = type(f.default)(value)
        check = f.metadata.get("check")
        if check is not None and not check(value):
            rule_text = f.metadata["rule"]
            raise InvalidArgument(f"{f.name}={value!r}: {rule_text}", field=f.name)
        kwargs[f.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class DecodeOptions:
    """One Decode's options: the daemon's single decode-options type.

    Built from the wire's ``DecodeConfig`` by field name (:meth:`from_fields`): the fields of
    ``SamplingParams`` go to ``sampling``, the rest are declared here. Adding a field means the
    proto and one of these two dataclasses; a test checks every proto field has a home.
    """

    max_tokens: int = field(
        default=DEFAULT_MAX_TOKENS, metadata=rule(lambda v: v >= 1, "must be >= 1")
    )
    stop: tuple[str, ...] = field(
        default=(),
        metadata=rule(
            _stop_strings,
            f"at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} characters",
        ),
    )
    stop_token_ids: frozenset[int] = field(
        default=frozenset(), metadata=rule(_stop_ids, f"at most {MAX_STOP_TOKENS} ids >= 0")
    )
    #: the language the output must belong to (see ``modeld.structured``)
    response_format: ResponseFormat | None = None
    tools: tuple[ToolDefinition, ...] = field(
        default=(), metadata=rule(lambda v: len(v) <= MAX_TOOLS, f"at most {MAX_TOOLS} tools")
    )
    #: "" / "auto" | "none" | "required" | a tool's name
    tool_choice: str = ""
    #: "" (detected from the template) | one of ``TOOL_CALL_FORMATS``
    tool_call_format: str = field(
        default="",
        metadata=rule(
            lambda v: v in ("", *TOOL_CALL_FORMATS),
            f"must be empty (detect) or one of {', '.join(TOOL_CALL_FORMATS)}",
        ),
    )
    #: "split" (also "") | "none"
    reasoning_format: str = field(
        default="", metadata=rule(lambda v: v in ("", "split", "none"), "must be split or none")
    )
    thinking_budget: int | None = None
    #: False: the Decode ends after its first tool call; True: calls may follow one another
    parallel_tool_calls: bool = False
    #: top alternatives per generated token (0..MAX_LOGPROBS); None: no logprobs
    logprobs: int | None = field(
        default=None,
        metadata=rule(lambda v: v is None or 0 <= v <= MAX_LOGPROBS, f"must be 0..{MAX_LOGPROBS}"),
    )
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @property
    def split_thinking(self) -> bool:
        return self.reasoning_format != "none"

    @classmethod
    def from_fields(cls, values: Mapping[str, object]) -> DecodeOptions:
        """From wire field values by name, sampling fields flat among them; unset fields take
        their defaults.

        :raises InvalidArgument: a value outside its field's rule, or a name with no field.
        """
        sampling_names = {f.name for f in dataclasses.fields(SamplingParams)}
        own_names = {f.name for f in dataclasses.fields(cls)} - {"sampling"}
        unknown = set(values) - sampling_names - own_names
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidArgument(f"{name}: not a decode option", field=name)
        sampling = checked(SamplingParams, {k: values[k] for k in sampling_names & set(values)})
        own = {k: values[k] for k in own_names & set(values)}
        return dataclasses.replace(checked(cls, own), sampling=sampling)


@dataclass(frozen=True)
class DecodeStep:
    text: str
    token_ids: tuple[int, ...]
    final: DecodeFinal | None = None
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()  #: one per id in token_ids, when asked for


@dataclass(frozen=True)
class ResolvedConfig:
    """A new session's context size and how it was decided (all in tokens), and the
    engine's threads and batch size."""

    n_ctx: int
    requested_n_ctx: int
    model_max_context: int
    memory_fit_context: int
    n_threads: int
    n_batch: int
    kv_cache_type: str = "f16"  #: its K and V cache's element type
