"""Shared with the daemon: what modeldconn returns and takes, as plain frozen dataclasses.

The daemon builds :class:`PrefixResult`, :class:`DecodeFinal` and friends itself, so this module
imports no generated code: turning these into wire messages and back is ``_convert``'s job, and
the public API carries no protobuf type.

:class:`DecodeOptions` is the client's one decode-options type. ``Session.decode`` and
``generate`` (and their asyncio twins) take ``options: DecodeOptions | None`` plus any of its
fields as keywords (``session.decode(max_tokens=16, stop=["\\n"])``); the keywords replace the
named fields of ``options`` (or of the defaults), and an unknown keyword is a ``TypeError`` naming
it. The keywords are typed ``object`` on purpose: listing the fields a second time (a
``TypedDict``) would mean two places to change when a sampling field is added. Values are
checked when ``decode`` is called, before anything is sent (``InvalidArgument`` naming the field).
Adding a sampling field means adding it to ``DecodeConfig`` in the proto and to
:class:`DecodeOptions`: ``_convert.decode_config_to_pb`` is generic over the dataclass's fields
(a function there rather than a ``to_pb()`` method, so no public type hands out a protobuf
message), and a unit test fails when the two disagree. A field whose wire type is a message or
a map (``response_format``, ``tools``, ``logit_bias``) is a special case there, and is frozen by
its own rule here (``_SPECIAL_OPTIONS``): mappings become :class:`ResponseFormat` /
:class:`ToolDefinition`, and ``logit_bias`` a tuple of (id, bias) pairs, so that options stay
hashable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ._errors import InvalidArgument

__all__ = [
    "Capabilities",
    "Capacity",
    "Chat",
    "Completion",
    "DaemonStatus",
    "DecodeChunk",
    "DecodeFinal",
    "DecodeOptions",
    "Description",
    "EmbedUsage",
    "EmbeddingModelStatus",
    "Embeddings",
    "InputLike",
    "LoadedModelStatus",
    "ModelEntry",
    "ModelFacts",
    "ModelList",
    "ModelLoad",
    "ModelRef",
    "ModelUnload",
    "Plan",
    "PlanMemory",
    "PrefixResult",
    "RerankUsage",
    "Reranking",
    "ResponseFormat",
    "SessionExplanation",
    "SessionInfo",
    "SessionListing",
    "SnapshotInfo",
    "SuffixResult",
    "TokenLogprob",
    "ToolCall",
    "ToolDefinition",
    "TopLogprob",
    "TurnReuse",
]


@dataclass(frozen=True)
class ModelRef:
    """Which model: a bare ``name`` (under the data root's models/, or packaged), or a ``path``.

    ``type`` is the backend (``llama`` | ``openvino``; empty: the daemon's own) and ``digest`` the
    file's sha256, checked when given.
    """

    name: str = ""
    type: str = ""
    digest: str = ""
    path: str = ""

    @classmethod
    def of(cls, value: ModelRef | str) -> ModelRef:
        if isinstance(value, ModelRef):
            return value
        looks_like_path = "/" in value or value.endswith(".gguf")
        return cls(path=value) if looks_like_path else cls(name=value)


def _json_text(value: str | Mapping[str, Any], name: str) -> str:
    """``value`` as JSON text: a str is kept as it is, a mapping is ``json.dumps``'d.

    :raises InvalidArgument: a mapping that is not JSON-serializable (field ``name``)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: not JSON-serializable: {exc}", field=name) from None


@dataclass(frozen=True)
class ResponseFormat:
    """What the output must be (``DecodeConfig.response_format``): exactly one of its fields.

    ``json_schema``: a JSON Schema (llguidance's subset), given as JSON text or as a mapping
    (``json.dumps``'d: the field always holds text afterwards); ``json_object``: any JSON
    object; ``regex``: the whole output matches it (Rust regex syntax); ``lark``: a Lark grammar
    (llguidance's dialect); ``gbnf``: a llama.cpp GBNF grammar. Decoding ends with
    ``stop_reason`` ``grammar_end`` once the language is complete (unless EOS or a stop comes
    first). A grammar that does not compile is the daemon's ``InvalidArgument``.

    Build one with :meth:`from_schema`, :meth:`any_json_object`, :meth:`from_regex`,
    :meth:`from_lark`, :meth:`from_gbnf`, or :meth:`of` (a mapping such as
    ``{"regex": "[0-9]+"}`` or OpenAI's ``{"type": "json_schema", "json_schema": {"schema":
    {...}}}`` / ``{"type": "json_object"}``).

    :raises InvalidArgument: none or more than one kind set (field ``response_format``).
    """

    json_schema: str | Mapping[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    lark: str | None = None
    gbnf: str | None = None

    def __post_init__(self) -> None:
        if self.json_schema is not None and not isinstance(self.json_schema, str):
            schema = _json_text(self.json_schema, "response_format.json_schema")
            object.__setattr__(self, "json_schema", schema)
        if len(self.kinds()) != 1:
            raise InvalidArgument(
                "response_format: set exactly one of json_schema, json_object, regex, lark, "
                f"gbnf (got {', '.join(self.kinds()) or 'none'})",
                field="response_format",
            )

    def kinds(self) -> list[str]:
        """The names of the fields set (one, once constructed)."""
        return [
            spec.name
            for spec in fields(self)
            if getattr(self, spec.name) is not None and getattr(self, spec.name) is not False
        ]

    @property
    def kind(self) -> str:
        """The one field set: json_schema | json_object | regex | lark | gbnf."""
        return self.kinds()[0]

    @classmethod
    def from_schema(cls, schema: str | Mapping[str, Any]) -> ResponseFormat:
        """Output valid for this JSON Schema (JSON text, or a mapping)."""
        return cls(json_schema=schema)

    @classmethod
    def any_json_object(cls) -> ResponseFormat:
        """Output that is one JSON object, any object."""
        return cls(json_object=True)

    @classmethod
    def from_regex(cls, pattern: str) -> ResponseFormat:
        """Output the whole of which matches ``pattern`` (Rust regex syntax)."""
        return cls(regex=pattern)

    @classmethod
    def from_lark(cls, grammar: str) -> ResponseFormat:
        """Output in the language of a Lark grammar (llguidance's dialect; starts at ``start``)."""
        return cls(lark=grammar)

    @classmethod
    def from_gbnf(cls, grammar: str) -> ResponseFormat:
        """Output in the language of a llama.cpp GBNF grammar (starts at ``root``)."""
        return cls(gbnf=grammar)

    @classmethod
    def of(cls, value: ResponseFormat | Mapping[str, Any]) -> ResponseFormat:
        """``value`` as a ResponseFormat: itself, a mapping of one of its fields
        (``{"json_schema": {...}}``), or OpenAI's shapes (``{"type": "json_object"}``,
        ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``).

        :raises InvalidArgument: anything else (field ``response_format``)."""
        if isinstance(value, ResponseFormat):
            return value
        if not isinstance(value, Mapping):
            raise InvalidArgument(
                f"response_format={value!r}: give a ResponseFormat or a mapping",
                field="response_format",
            )
        kind = value.get("type")
        if kind == "json_object" and set(value) == {"type"}:
            return cls(json_object=True)
        if kind == "json_schema" and isinstance(value.get("json_schema"), Mapping):
            inner = value["json_schema"]
            if "schema" in inner:
                return cls(json_schema=inner["schema"])
        names = {spec.name for spec in fields(cls)}
        if value and set(value) <= names:
            return cls(**value)
        raise InvalidArgument(
            f"response_format={dict(value)!r}: name one of {', '.join(sorted(names))}",
            field="response_format",
        )


@dataclass(frozen=True)
class ToolDefinition:
    """A tool the model may call: the chat template renders it (``Chat.tools``) and a Decode
    may call it (``DecodeOptions.tools``).

    ``name``: 1..64 characters of ``[A-Za-z0-9_.-]`` (checked by the daemon);
    ``parameters``: the JSON Schema of its arguments, JSON text or a mapping (``json.dumps``'d:
    the field always holds text afterwards).
    """

    name: str
    description: str = ""
    parameters: str | Mapping[str, Any] = "{}"

    def __post_init__(self) -> None:
        if not isinstance(self.parameters, str):
            text = _json_text(self.parameters, f"tools[{self.name}].parameters")
            object.__setattr__(self, "parameters", text)

    @classmethod
    def of(cls, value: ToolDefinition | Mapping[str, Any]) -> ToolDefinition:
        """``value`` as a ToolDefinition: itself, ``{"name", "description", "parameters"}``, or
        OpenAI's ``{"type": "function", "function": {"name", "description", "parameters"}}``.

        :raises InvalidArgument: anything else (field ``tools``)."""
        if isinstance(value, ToolDefinition):
            return value
        if isinstance(value, Mapping):
            inner = value.get("function", value)
            if isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
                return cls(
                    name=inner["name"],
                    description=inner.get("description") or "",
                    parameters=inner.get("parameters") or "{}",
                )
        raise InvalidArgument(
            f"tool {value!r}: give a ToolDefinition or a mapping with a name", field="tools"
        )


@dataclass(frozen=True)
class ToolCall:
    """A call of a tool: streamed in ``DecodeChunk.tool_calls``, or in an assistant message's
    history (``{"role": "assistant", "tool_calls": [...]}``).

    ``arguments``: JSON text of an object (a mapping given here is ``json.dumps``'d); ``args``
    parses it. ``index``: the call's place among one Decode's calls, from 0.
    """

    id: str = ""
    name: str = ""
    arguments: str | Mapping[str, Any] = "{}"
    index: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.arguments, str):
            text = _json_text(self.arguments, f"tool_calls[{self.index}].arguments")
            object.__setattr__(self, "arguments", text)

    @property
    def args(self) -> Any:
        """``arguments`` parsed (``json.loads``); a dict for every call the daemon streams.

        :raises json.JSONDecodeError: arguments that are not JSON (only a client-made call)."""
        return json.loads(str(self.arguments))

    @classmethod
    def of(cls, value: ToolCall | Mapping[str, Any], index: int = 0) -> ToolCall:
        """``value`` as a ToolCall: itself, OpenAI's ``{"id", "type": "function", "function":
        {"name", "arguments"}}`` (``arguments`` JSON text or a mapping), or a flat
        ``{"id", "name", "arguments", "index"}``; ``index`` when the mapping has none.

        :raises InvalidArgument: anything else (field ``tool_calls``)."""
        if isinstance(value, ToolCall):
            return value
        if isinstance(value, Mapping):
            inner = value.get("function", value)
            if isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
                arguments = inner.get("arguments")
                return cls(
                    id=str(value.get("id") or ""),
                    name=inner["name"],
                    arguments="{}" if arguments is None else arguments,
                    index=int(value.get("index", index)),
                )
        raise InvalidArgument(
            f"tool call {value!r}: give a ToolCall or a mapping with a function name",
            field="tool_calls",
        )


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position (``TokenLogprob.top``)."""

    id: int
    logprob: float  #: natural log, of the engine's raw logits (before any sampler step)
    piece: bytes  #: the token's bytes: possibly a piece of a UTF-8 character

    @property
    def text(self) -> str:
        """``piece`` decoded as UTF-8, invalid bytes replaced (U+FFFD)."""
        return self.piece.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's logprob and its top alternatives (``DecodeOptions.logprobs``)."""

    id: int
    logprob: float  #: natural log, of the engine's raw logits (before any sampler step)
    piece: bytes  #: the token's bytes: possibly a piece of a UTF-8 character
    top: tuple[TopLogprob, ...] = ()  #: the N most likely, most likely first

    @property
    def text(self) -> str:
        """``piece`` decoded as UTF-8, invalid bytes replaced (U+FFFD)."""
        return self.piece.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Chat:
    """Chat messages, rendered by the daemon with the model's own template.

    Each message is a mapping with ``role`` (system | user | assistant | tool | ...) and
    ``content`` (a str; None or absent is "", as for an assistant message that only calls
    tools), and optionally ``tool_calls`` (role assistant: :class:`ToolCall`\\ s or OpenAI's
    ``{"id", "type": "function", "function": {"name", "arguments"}}``, arguments JSON text or a
    mapping), ``tool_call_id`` and ``name`` (role tool: which call this is the result of, and
    the tool's name) and ``thinking`` (role assistant: its thinking).

    ``tools``: what the template renders (its ``tools`` variable): :class:`ToolDefinition`\\ s
    or mappings (see :meth:`ToolDefinition.of`), kept as a tuple of ToolDefinition.
    ``enable_thinking``: the template's ``enable_thinking`` variable; None leaves it undefined.
    """

    messages: Sequence[Mapping[str, Any]]
    add_generation_prompt: bool = True
    tools: Sequence[ToolDefinition] = ()
    enable_thinking: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tools, ToolDefinition | Mapping):
            raise InvalidArgument("tools is one tool: pass a list of them", field="tools")
        object.__setattr__(self, "tools", tuple(ToolDefinition.of(t) for t in self.tools))


#: text, token ids, or chat messages (a Chat, or a list of {"role", "content", ...} dicts)
InputLike = str | Sequence[int] | Chat | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class DecodeOptions:
    """How to sample, field for field the wire's ``DecodeConfig``; None: the daemon's default.

    Greedy unless ``temperature`` > 0. Lists given for ``stop`` / ``stop_token_ids`` are kept as
    tuples (a bare string for ``stop`` is one stop string). ``response_format`` may be given as a
    mapping (:meth:`ResponseFormat.of`), ``tools`` as mappings (:meth:`ToolDefinition.of`),
    ``logit_bias`` as a mapping of token id to bias.

    :raises InvalidArgument: a field that cannot be frozen (``tools`` given one tool, not a
        list; ``logit_bias`` neither a mapping nor pairs; a response format of no or many
        kinds), naming it. Ranges are checked when the request is built.
    """

    max_tokens: int | None = None  #: default 256
    temperature: float | None = None  #: unset or below 1e-4 (the limit): greedy
    top_k: int | None = None  #: default 40; 0 = off
    top_p: float | None = None  #: default 0.95; 1 = off
    min_p: float | None = None  #: default 0.05; 0 = off
    repeat_penalty: float | None = None  #: default 1.0 = off
    repeat_last_n: int | None = None  #: default 64
    seed: int | None = None  #: default: random
    stop: Sequence[str] = ()  #: stop strings, held back while they could match, never sent
    ignore_eos: bool = False
    #: stop when one of these ids is sampled: the id is streamed (as EOS is), its text is not
    stop_token_ids: Sequence[int] = ()
    #: what the output must be (a mapping is read by :meth:`ResponseFormat.of`); None: free text
    response_format: ResponseFormat | None = None
    #: tools this Decode may call (ToolDefinitions or mappings, see :meth:`ToolDefinition.of`)
    tools: Sequence[ToolDefinition] = ()
    #: "" / "auto": the model may call a tool; "none"; "required": a call (or more, with
    #: ``parallel_tool_calls``); any other
    #: value names the one tool to call (OpenAI's ``{"type": "function", "function": {"name":
    #: ...}}`` is read as that name). Needs ``tools``; excludes ``response_format``.
    tool_choice: str = ""
    #: "" (detected from the chat template) | hermes | llama3 | mistral | generic
    tool_call_format: str = ""
    #: "" / "split": a thinking section streams in ``DecodeChunk.thinking``; "none": in text
    reasoning_format: str = ""
    thinking_budget: int | None = None  #: at most this many thinking tokens; None: no limit
    #: 0..20: each token's logprob and the top N alternatives (``DecodeChunk.logprobs``)
    logprobs: int | None = None
    #: token id -> added to its logit (-inf bans it); a mapping or (id, bias) pairs, kept as a
    #: tuple of (id, bias) pairs sorted by id
    logit_bias: Sequence[tuple[int, float]] = ()
    #: False (default, as llama-server): at most one tool call, then the Decode ends
    #: (``tool_calls``); True: calls may follow one another
    parallel_tool_calls: bool = False

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name in _SPECIAL_OPTIONS:
                if value is not None:
                    object.__setattr__(self, spec.name, _SPECIAL_OPTIONS[spec.name](value))
                continue
            if spec.default != () or isinstance(value, tuple):
                continue  # a scalar, or a repeated field already a tuple
            if isinstance(value, str):
                value = (value,)
            try:
                object.__setattr__(self, spec.name, tuple(value))
            except TypeError:
                raise InvalidArgument(
                    f"{spec.name}={value!r}: not a sequence", field=spec.name
                ) from None


def _tools(value: Any) -> tuple[ToolDefinition, ...]:
    if isinstance(value, ToolDefinition | Mapping | str):
        raise InvalidArgument("tools is one tool: pass a list of them", field="tools")
    try:
        return tuple(ToolDefinition.of(tool) for tool in value)
    except TypeError:
        raise InvalidArgument(f"tools={value!r}: not a sequence", field="tools") from None


def _tool_choice(value: Any) -> Any:
    """OpenAI's ``{"type": "function", "function": {"name": N}}`` as ``N``; else as given
    (a wrong type is refused when the request is built)."""
    if isinstance(value, Mapping):
        inner = value.get("function")
        if isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
            return inner["name"]
        raise InvalidArgument(f"tool_choice={dict(value)!r}: name a function", field="tool_choice")
    return value


def _logit_bias(value: Any) -> tuple[tuple[Any, Any], ...]:
    """A mapping or (id, bias) pairs as pairs sorted by id; types are checked when the
    request is built (``InvalidArgument`` naming ``logit_bias``)."""
    try:
        pairs = list(value.items()) if isinstance(value, Mapping) else list(value)
        checked = [(token, bias) for token, bias in pairs]
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"logit_bias={value!r}: give a mapping of token id to bias", field="logit_bias"
        ) from None
    try:
        return tuple(sorted(checked, key=lambda pair: pair[0]))
    except TypeError:  # ids of mixed types: refused when the request is built
        return tuple(checked)


#: fields of DecodeOptions frozen by their own rule (``None`` is kept as it is)
_SPECIAL_OPTIONS: dict[str, Any] = {
    "response_format": ResponseFormat.of,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "logit_bias": _logit_bias,
}


@dataclass(frozen=True)
class LoadedModelStatus:
    """A model the daemon has open (``DaemonStatus.models``)."""

    name: str
    digest: str
    path: str
    sessions: int
    weights_loaded: bool  #: false after an idle unload; the next use loads them again
    #: most sessions' decode steps one engine call computes; 0 while the weights are unloaded
    decode_batch_rows: int
    #: every batched row bit-identical to solo; false only after --decode-batch-rows asked more
    decode_batch_exact: bool
    #: bumped by every load and unload of this model (a changed value: weights reloaded)
    generation: int = 0
    alias: str = ""  #: the catalog alias it was loaded under, if any
    loads: int = 0  #: times its weights were loaded
    last_load_s: float = 0.0  #: seconds the last load took


@dataclass(frozen=True)
class ModelLoad:
    """What ``Client.load_model()`` answers."""

    facts: ModelFacts
    already_loaded: bool  #: the weights were in: answered at once
    generation: int  #: the model's generation now (bumped by every load and unload)
    load_s: float  #: seconds this call waited for the load (0 when already loaded)


@dataclass(frozen=True)
class ModelUnload:
    """What ``Client.unload_model()`` answers."""

    unloaded: bool  #: False: its weights were not loaded
    sessions_parked: int  #: its live sessions, parked first (each restores on its next use)
    generation: int  #: the model's generation now


@dataclass(frozen=True)
class DaemonStatus:
    """What ``Client.status()`` answers: the daemon's identity, state, sessions and counters."""

    instance_id: str
    protocol: int
    min_protocol: int
    backend: str
    version: str
    state: str  #: standby | starting | serving | draining | fenced
    pid: int
    host: str
    endpoint: str
    uptime_s: float
    sessions_open: int
    models: tuple[LoadedModelStatus, ...]
    prefix_shares: int  #: EnsurePrefix calls that started from another session's KV
    prefix_shared_tokens: int  #: tokens so copied instead of computed
    sessions_live: int  #: holding an engine context
    sessions_parked: int  #: KV saved to RAM or disk, restored on next use
    parked_ram_bytes: int
    parked_disk_bytes: int
    parks: int
    restores: int
    max_live_sessions: int
    queue_depth: int  #: engine jobs waiting
    clients_attached: int
    sessions_reaped: int  #: closed by the idle reaper or because their client went away
    prefix_hits: int  #: EnsurePrefix calls that reused resident KV (own or shared)
    prefix_misses: int  #: EnsurePrefix calls that reused nothing
    model_loads: int  #: weights loaded (first use and after idle unloads)
    decode_calls: int  #: engine calls that computed decoded tokens
    decode_rows: int  #: tokens they computed: rows / calls > 1 when decode batches
    #: donors whose KV the engine could not copy into the receiver (another context size or
    #: layout): the receiver computed the prefix itself
    prefix_share_failures: int
    #: embedding contexts alive now (created on demand, freed when their model idles)
    embedding_contexts: int = 0
    embedding_models: tuple[EmbeddingModelStatus, ...] = ()
    #: what a session gets when it does not ask (``open_session(exact_prefix=None)``)
    exact_prefix: bool = False
    prefix_chunk: int = 0  #: C: prompts are computed in chunks [k*C, (k+1)*C)
    #: the catalog in force (``<data root>/models.toml``), its aliases, and why the last
    #: reload was refused ("" when it was not; the previous catalog then stays in force)
    catalog_path: str = ""
    catalog_error: str = ""
    catalog_aliases: int = 0


@dataclass(frozen=True)
class ModelEntry:
    """One model ``Client.list_models()`` found: a catalog alias, a GGUF file or IR directory
    under the model roots, or a packaged model not assembled yet."""

    alias: str  #: "" for a file no alias names
    path: str
    source: str  #: "catalog" | "file" | "packaged"
    backend: str  #: the backend type that reads it: "llama" | "openvino"
    tasks: tuple[str, ...]
    size_bytes: int
    digest: str  #: sha256 hex, cached by path, size and mtime
    architecture: str
    loaded: bool  #: weights resident in this daemon now
    warmup: str  #: aliases: "eager" | "background" | "lazy"
    error: str  #: why its facts could not be read, if they could not


@dataclass(frozen=True)
class ModelList:
    """What ``Client.list_models()`` answers: the entries, aliases first, and the catalog."""

    models: tuple[ModelEntry, ...]
    catalog_path: str
    #: why the last reload was refused ("" when it was not; the previous catalog stays)
    catalog_error: str


@dataclass(frozen=True)
class EmbeddingModelStatus:
    """A model with an embedding side open (``DaemonStatus.embedding_models``)."""

    name: str
    digest: str
    contexts: int  #: embedding contexts alive now
    weights_loaded: bool  #: false once freed after idling; the next Embed loads them again
    shares_weights: bool  #: a generative model's weights, shared with its sessions


@dataclass(frozen=True)
class ModelFacts:
    name: str
    path: str
    digest: str
    file_bytes: int
    architecture: str
    context_length: int
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    sliding_window: int
    vocab_size: int
    chat_template: str
    chat_template_source: str
    bos_token_id: int
    eos_token_ids: tuple[int, ...]
    add_bos: bool
    #: "generate" (sessions) and/or "embed" (Embed)
    tasks: tuple[str, ...] = ("generate",)
    embedding_dims: int = 0  #: floats in one Embed vector; 0 when the model cannot embed
    pooling: str = ""  #: Embed's default pooling: mean | cls | last ("" when it cannot embed)


@dataclass(frozen=True)
class Capacity:
    kv_bytes_per_token: int
    free_bytes: int
    model_max_context: int
    memory_fit_context: int
    default_context: int


@dataclass(frozen=True)
class Description:
    facts: ModelFacts
    capacity: Capacity


@dataclass(frozen=True)
class Capabilities:
    token_level_truncation: bool
    kv_copy_between_sessions: bool
    native_state_snapshot: bool
    batched_decode: bool
    chat_template: bool
    grammar: bool  #: response_format and tool_choice enforced by a token mask (llguidance)
    tools: bool = False  #: tool definitions rendered and tool calls parsed
    thinking: bool = False  #: thinking sections split into ``DecodeChunk.thinking``
    logprobs: bool = False  #: ``DecodeOptions.logprobs``
    logit_bias: bool = False  #: ``DecodeOptions.logit_bias``


@dataclass(frozen=True)
class PlanMemory:
    """A plan's memory arithmetic, in bytes (``Plan.memory``)."""

    weights_bytes: int  #: what the weights take resident (the file's size)
    kv_bytes_per_token: int  #: at the planned KV cache type
    overhead_bytes: int  #: compute buffers and the like, per context
    free_bytes: int  #: what modeld may still spend now
    required_bytes: int  #: weights (unless resident) + KV x n_ctx + overhead
    weights_resident: bool


@dataclass(frozen=True)
class Plan:
    """What ``Client.plan()`` answers: whether and how this daemon would run a model, with no
    weights loaded. ``support_level``: "full" | "partial" (``reason`` says what is missing) |
    "unsupported" (``reason``, and ``fix``: what would make it run)."""

    executable: bool
    backend: str  #: "llama" | "openvino"
    device: str  #: "CPU", "GPU", "NPU", "AUTO", "CUDA0", ...
    device_reason: str
    support_level: str
    reason: str
    fallback_reason: str  #: when the plan fell back (another device, fewer layers)
    fix: str
    capabilities: Capabilities
    memory: PlanMemory
    max_context: int  #: the largest context that fits now, tokens
    sessions_at_default_context: int
    default_context: int
    n_ctx: int  #: the context planned for (the request's or the default)
    fits: bool  #: memory.required_bytes <= memory.free_bytes
    n_gpu_layers: int  #: llama: layers offloaded (0 on a CPU)
    kv_cache_type: str
    alias: str  #: the catalog alias the reference named, if it named one
    facts: ModelFacts | None  #: None when the model's header could not be read
    loaded: bool  #: weights resident now


@dataclass(frozen=True)
class SessionInfo:
    handle: str
    n_ctx: int
    requested_n_ctx: int
    model_max_context: int
    memory_fit_context: int
    n_threads: int
    n_batch: int
    facts: ModelFacts
    capabilities: Capabilities
    #: a warm turn gives exactly a cold run's tokens (whole chunks reused; see the README)
    exact_prefix: bool = False
    prefix_chunk: int = 0  #: C: prompts are computed in chunks [k*C, (k+1)*C)
    #: the element type of its K and V cache: "f16" | "q8_0" | "q4_0"
    kv_cache_type: str = "f16"


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    bytes: int
    tokens: int


@dataclass(frozen=True)
class PrefixResult:
    reused: int
    prefilled: int
    dropped: int
    prefix_tokens: int
    resident: int
    available: int
    prefix_hash: str
    #: of ``reused``, tokens whose KV was copied from another session instead of computed
    shared: int = 0
    #: a chat prefix: "template" (the model's template rendered it all) or "fallback" (tools
    #: through modeld's fallback rendering); "" for text and token ids
    rendering: str = ""


@dataclass(frozen=True)
class SuffixResult:
    suffix_tokens: int
    prefilled: int
    resident: int
    available: int
    #: as ``PrefixResult.rendering``
    rendering: str = ""


@dataclass(frozen=True)
class DecodeFinal:
    """How a Decode ended, its usage and timings (``DecodeChunk.final`` on the last chunk).

    ``stop_reason``: ``eos`` | ``max_tokens`` | ``stop`` (``stop_string`` says which) |
    ``stop_token`` (``stop_token`` says which) | ``cancelled`` | ``context_full`` |
    ``grammar_end`` (the response_format's language, or a required/named tool call, is
    complete) | ``tool_calls`` (the model made tool calls, streamed in
    ``DecodeChunk.tool_calls``, and stopped).
    """

    stop_reason: str
    stop_string: str
    prompt_tokens: int
    reused_tokens: int
    completion_tokens: int
    prefill_ms: float
    ttft_ms: float
    decode_ms: float
    tokens_per_s: float
    resident: int
    available: int
    stop_token: int | None = None  #: the stop token id sampled, when stop_reason is stop_token
    thinking_tokens: int = 0  #: of completion_tokens, those in a thinking section


@dataclass(frozen=True)
class DecodeChunk:
    """A piece of a Decode stream.

    ``text``: answer text; ``thinking``: thinking text (never also in ``text``);
    ``tool_calls``: complete calls parsed from the output (their text is in neither);
    ``token_ids``: every id generated in this chunk, whichever of these it went to;
    ``logprobs``: one per id in ``token_ids`` when ``DecodeOptions.logprobs`` is set.
    """

    text: str
    token_ids: tuple[int, ...] = field(default_factory=tuple)
    final: DecodeFinal | None = None  #: set on the last chunk only
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Completion:
    """A whole Decode, collected (``Session.generate``): the chunks' text, thinking, ids,
    tool calls and logprobs concatenated in order, and the last chunk's ``final``."""

    text: str
    token_ids: tuple[int, ...]
    final: DecodeFinal
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()

    @property
    def stop_reason(self) -> str:
        """``final.stop_reason``."""
        return self.final.stop_reason


@dataclass(frozen=True)
class EmbedUsage:
    input_tokens: tuple[int, ...]  #: tokens embedded per input (after any truncation)
    total_tokens: int
    truncated_tokens: tuple[int, ...]  #: tokens cut off per input (all 0 unless truncate)


@dataclass(frozen=True)
class Embeddings:
    """What ``embed`` answers.

    ``vectors``: one float32 vector of ``dims`` values per input, in input order: a numpy
    array of shape ``(len(inputs), dims)``, dtype float32, when numpy is importable, else a
    list of lists of floats. Unit L2 norm when ``normalized``.
    """

    vectors: Any
    dims: int
    pooling: str  #: the pooling used: mean | cls | last
    normalized: bool
    usage: EmbedUsage
    engine_calls: int  #: engine calls the batch took


@dataclass(frozen=True)
class RerankUsage:
    #: tokens the model read per document (its whole input: prompt, query and document)
    input_tokens: tuple[int, ...]
    #: tokens computed in all (a prompt prefix every document shares is counted once)
    total_tokens: int
    truncated_tokens: tuple[int, ...]  #: tokens cut off per document (all 0 unless truncate)


@dataclass(frozen=True)
class Reranking:
    """What ``rerank`` answers.

    ``scores``: one float per document, in input order, higher is more relevant: a
    cross-encoder's own output for the pair (``method`` "cross_encoder", unbounded), or
    P(yes) normalised over {yes, no} in [0, 1] (``method`` "generative_yes_no"). ``order``:
    document indices, best first (ties: lower index first), only the ``top_n`` best when asked.
    """

    scores: tuple[float, ...]
    order: tuple[int, ...]
    method: str  #: "cross_encoder" | "generative_yes_no"
    usage: RerankUsage


@dataclass(frozen=True)
class SessionListing:
    """One session as the daemon lists it.

    ``residency``: "live" | "ram" | "disk" (where its KV is) | "dropped" (freed by
    ``evict_session(..., "drop")``; the tape stays and the next turn recomputes it) | "none";
    ``kv_bytes``: bytes its KV takes there; ``idle_s``: seconds since its last operation ended;
    ``pin_remaining_s``: seconds its pin lasts (0: unpinned); ``prefix_hash``: sha256 hex of
    its tape's token ids (equal tapes, equal hash; EnsurePrefix's ``prefix_hash`` for the same
    tokens); ``client_id`` / ``client_name``: who opened it ("" for none)."""

    handle: str
    model: str
    model_digest: str
    client_id: str
    client_name: str
    tape_tokens: int
    residency: str
    kv_bytes: int
    idle_s: float
    pinned: bool
    pin_remaining_s: float
    prefix_hash: str
    n_ctx: int
    kv_cache_type: str
    busy: bool


@dataclass(frozen=True)
class TurnReuse:
    """One turn of a session's reuse history, in tokens.

    ``operation``: "ensure_prefix" | "prefill_suffix" | "decode" | "fork" | "restore";
    ``reused``: KV kept (of which ``shared`` was copied from another session); ``prefilled``:
    computed; ``dropped``: truncated; ``generated``: decoded; ``restored_from``: "ram" |
    "disk" when the turn first restored the session's parked KV."""

    operation: str
    at_unix_s: float
    reused: int
    prefilled: int
    dropped: int
    generated: int
    shared: int
    restored_from: str


@dataclass(frozen=True)
class SessionExplanation:
    session: SessionListing
    turns: tuple[TurnReuse, ...]  #: oldest first (the daemon keeps the last 32)
