"""The narrow seam between the daemon and an inference engine.

Everything here runs on the engine thread (see ``modeld.engine``): engines are blocking and not
safe to call from several threads. Session logic (the token tape, reuse arithmetic, stop
strings, streaming) lives above this seam and is the same for every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import llguidance
import numpy as np

from modeld.models._facts import ModelFacts, ModelSpec
from modeldconn._errors import CapabilityMismatch, ContextOverflow, InvalidArgument
from modeldconn._types import Capabilities

__all__ = [
    "MAX_LOGIT_BIAS",
    "MAX_SEED",
    "MIN_REPEAT_PENALTY",
    "MIN_TEMPERATURE",
    "Backend",
    "Capabilities",
    "EmbeddingBackend",
    "EmbeddingEngine",
    "EngineModel",
    "EngineSession",
    "EngineState",
    "RankingEngine",
    "Sampler",
    "SamplingParams",
    "check_generates",
    "check_room",
    "check_state_fits",
    "check_text",
    "rule",
    "without_double_bos",
]


@dataclass(frozen=True)
class EngineState:
    """A session's engine state, portable between contexts of the same model and runtime."""

    kv: bytes  #: the engine's own serialisation of the resident KV
    kv_len: int
    #: float32 logits of the last resident token, when they were current: a restored session
    #: samples its next token from exactly these, never from a recomputation
    logits: bytes | None

    @property
    def size(self) -> int:
        return len(self.kv) + len(self.logits or b"")


def rule(check: Callable[[Any], bool], text: str) -> dict[str, object]:
    """A field's range, as dataclass field metadata: ``check(value)`` must hold; ``text`` says
    what it must be (quoted in the ``invalid_argument`` that refuses a value)."""
    return {"check": check, "rule": text}


def _finite(low: float, high: float, *, open_low: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        above = value > low if open_low else value >= low
        return math.isfinite(value) and above and value <= high

    return check


#: temperatures below this sample as their limit, greedy: logits divided by a subnormal
#: temperature overflow float32 (every candidate becomes +inf and the draw picks garbage), and
#: at 1e-4 a logit gap of 0.01 already leaves the runner-up a chance of e**-100
MIN_TEMPERATURE = 1e-4
#: repeat penalties below this are refused: dividing a logit by a smaller one can overflow
MIN_REPEAT_PENALTY = 1e-3
#: the wire's seed is a uint64; every value in 0..MAX_SEED is its own reproducible stream
MAX_SEED = 2**64 - 1


def _seed(value: Any) -> bool:
    return value is None or (isinstance(value, int) and 0 <= value <= MAX_SEED)


#: entries a Decode's logit_bias may hold (OpenAI allows 300; a ban list can be longer)
MAX_LOGIT_BIAS = 1024


def _bias(value: Any) -> bool:
    return len(value) <= MAX_LOGIT_BIAS and all(
        token >= 0 and (math.isfinite(bias) or bias == -math.inf) for token, bias in value
    )


@dataclass(frozen=True)
class SamplingParams:
    """How the sampler picks each token; defaults are what a client gets for an unset field.

    The one place a sampling field is declared: the wire's ``DecodeConfig`` field of the same
    name is read into it by name, and each field's ``rule`` is checked there.
    """

    #: < MIN_TEMPERATURE (0 and below included): greedy
    temperature: float = field(
        default=0.0,
        metadata=rule(math.isfinite, f"must be finite (< {MIN_TEMPERATURE:g} means greedy)"),
    )
    top_k: int = field(default=40, metadata=rule(lambda v: v >= 0, "must be >= 0 (0 = off)"))
    top_p: float = field(
        default=0.95, metadata=rule(_finite(0, 1, open_low=True), "must be in (0, 1]")
    )
    min_p: float = field(default=0.05, metadata=rule(_finite(0, 1), "must be in [0, 1]"))
    repeat_penalty: float = field(
        default=1.0,
        metadata=rule(
            _finite(MIN_REPEAT_PENALTY, 10), f"must be in [{MIN_REPEAT_PENALTY:g}, 10] (1 = off)"
        ),
    )
    #: tokens of the tape the penalty looks back over; -1 (or more than the context): all of it
    repeat_last_n: int = field(
        default=64, metadata=rule(lambda v: v >= -1, "must be >= -1 (-1 = whole context)")
    )
    #: None: a random seed
    seed: int | None = field(default=None, metadata=rule(_seed, f"must be in 0..{MAX_SEED}"))
    ignore_eos: bool = False
    #: (token id, bias) pairs, ids ascending: added to the logits before any sampler step
    #: (after a grammar's mask); -inf bans the token. Ids are checked against the vocabulary
    #: when the Decode starts.
    logit_bias: tuple[tuple[int, float], ...] = field(
        default=(),
        metadata=rule(_bias, f"at most {MAX_LOGIT_BIAS} ids >= 0, each bias finite or -inf"),
    )

    @property
    def greedy(self) -> bool:
        """Sampled as the limit of a vanishing temperature: the most likely token."""
        return self.temperature < MIN_TEMPERATURE

    def penalty_window(self, n_ctx: int) -> int:
        """How many of the last tokens the repeat penalty sees: ``repeat_last_n``, where -1 (and
        anything longer) is the whole context, ``n_ctx``; 0 when the penalty is off."""
        if self.repeat_penalty == 1.0 or self.repeat_last_n == 0:
            return 0
        return n_ctx if self.repeat_last_n < 0 else min(self.repeat_last_n, n_ctx)


def check_text(value: str, field: str, *, allow_nul: bool = True) -> None:
    """Text that is about to cross into C (a tokenizer, a chat template) must be exactly
    representable there.

    :raises InvalidArgument: ``value`` holds a lone surrogate (no UTF-8 form), or a NUL where
        ``allow_nul`` is False (a NUL-terminated C string would end there); ``field`` names it.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{field} holds a lone surrogate (U+{ord(value[exc.start]):04X} at character "
            f"{exc.start}), which has no UTF-8 form",
            field=field,
        ) from None
    if not allow_nul and "\x00" in value:
        raise InvalidArgument(
            f"{field} holds a NUL character (at {value.index(chr(0))})", field=field
        )


def without_double_bos(
    ids: list[int], bos: int, add_special: bool, starts_with_bos: Callable[[], bool]
) -> list[int]:
    """``ids`` of a text tokenized with ``add_special``, less the BOS the tokenizer added when
    the text itself already starts with one (``starts_with_bos()``: tokenized without specials
    added, its first id is ``bos``; only asked when the ids start with two BOS)."""
    if add_special and bos >= 0 and ids[:2] == [bos, bos] and starts_with_bos():
        return ids[1:]
    return ids


def check_generates(facts: ModelFacts) -> None:
    """:raises CapabilityMismatch: the model cannot generate (an embedding-only model): it has
    no sessions, no lanes, and its weights are loaded by the Embed verb alone."""
    if "generate" not in facts.tasks:
        raise CapabilityMismatch(
            f"{facts.name} cannot generate (tasks: {', '.join(facts.tasks)}): "
            "it serves Embed only, it has no sessions",
            model=facts.name,
            task="generate",
            tasks=",".join(facts.tasks),
        )


def check_room(resident: int, adding: int, n_ctx: int) -> None:
    """:raises ContextOverflow: ``adding`` tokens after ``resident`` ones exceed ``n_ctx``."""
    if resident + adding > n_ctx:
        raise ContextOverflow(
            f"{adding} more tokens do not fit: {resident} resident, n_ctx {n_ctx}",
            stage="prefill",
            resident=resident,
            additional=adding,
            n_ctx=n_ctx,
        )


def check_state_fits(kv_len: int, n_ctx: int) -> None:
    """:raises InvalidArgument: a saved state of ``kv_len`` tokens cannot be loaded into a
    session of ``n_ctx`` tokens (its ``kv_len``/``n_ctx`` metadata carry both numbers)."""
    if kv_len > n_ctx:
        raise InvalidArgument(
            f"a saved state of {kv_len} tokens does not fit n_ctx {n_ctx}",
            field="n_ctx",
            kv_len=kv_len,
            n_ctx=n_ctx,
        )


class Sampler(Protocol):
    def logits(self) -> np.ndarray:
        """The session's current logits as the model computed them, before any sampler step:
        float32, shape (vocab_size,). Read-only, valid until the next engine call."""

    def sample(self, allowed: np.ndarray | None = None) -> int:
        """Pick the next token from the session's current logits (natively, in the engine).

        ``allowed``: bool, shape (vocab_size,) (a grammar's mask): a False token's logit is
        -inf before any sampler step, so no step can pick it; the others' are untouched.
        """

    def close(self) -> None: ...


class EngineSession(Protocol):
    """One session's KV state inside the engine."""

    n_ctx: int
    #: tokens whose KV is resident, in tape order
    kv_len: int

    @property
    def batch_group(self) -> object:
        """Sessions with the same group can have their decode steps computed in one call."""

    def truncate(self, keep: int) -> None:
        """Drop KV past the first ``keep`` tokens."""

    def prefill(self, tokens: Sequence[int]) -> None:
        """Compute ``tokens`` after the resident ones; leaves logits for the last of them."""

    def logits_current(self) -> bool:
        """True when the engine holds logits for the last resident token."""

    def sampler(self, params: SamplingParams, history: Sequence[int]) -> Sampler: ...

    def save_state(self) -> EngineState: ...

    def load_state(self, state: EngineState) -> None:
        """Replace the resident KV (and logits) with ``state`` from :meth:`save_state` of a
        session of the same model, whatever its n_ctx.

        :raises InvalidArgument: ``state.kv_len`` exceeds this session's ``n_ctx``.
        :raises SnapshotMismatch: the engine refused the state (another model or KV layout).
        On either error this session's KV is empty (kv_len 0) and it is fully usable.
        """

    def adopt_prefix(self, donor: EngineSession | EngineState, keep: int) -> bool:
        """Replace this session's KV with the first ``keep`` tokens of ``donor``'s KV (a live
        session of the same model, or a state saved from one). Copies only what this session
        needs and can hold where the engine can. Returns False when the engine cannot copy
        (context sizes or layouts differ, the engine refused): this session's KV is then empty
        (kv_len 0), its logits not current, and it is fully usable. Never raises for that.

        After True: ``kv_len == keep``, and the logits are not current (the caller recomputes
        the last token when it needs them). ``keep`` 0 always succeeds (an empty KV).
        :raises ValueError: ``keep`` < 0.
        """

    def close(self) -> None: ...


class EngineModel(Protocol):
    facts: ModelFacts
    n_threads: int
    n_batch: int
    #: most sessions' tokens one decode_batch call computes (1: it is never called)
    max_decode_rows: int
    #: batched rows are bit-identical to solo ones (measured at load); False only when the
    #: operator asked for wider batches than that (--decode-batch-rows)
    decode_batch_exact: bool

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``. ``add_special``: the model's BOS (never a second one when the
        text starts with its own); ``parse_special``: control-token text (``<start_of_turn>``)
        becomes control tokens, else it is plain text and no id is a control token. NULs are
        text.

        :raises InvalidArgument: a lone surrogate in ``text``.
        """

    def is_control(self, token: int) -> bool:
        """A control token: template markup (BOS, turn markers), never produced by plain text."""

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def piece(self, token: int) -> bytes:
        """The bytes one generated token adds to the text (control tokens add none)."""

    def is_end_of_generation(self, token: int) -> bool: ...

    def end_of_generation_ids(self) -> list[int]: ...

    def grammar_tokenizer(self) -> llguidance.LLTokenizer:
        """The vocabulary as llguidance reads it (each token's bytes, control tokens marked,
        end-of-generation ids), built on first use (seconds for a 262k vocabulary) and kept.
        Any thread: callers are off the engine thread."""

    def open_session(self, n_ctx: int, kv_cache_type: str = "f16") -> EngineSession:
        """A new, empty session of ``n_ctx`` tokens whose K and V are cached as
        ``kv_cache_type``, one of its backend's ``kv_cache_types`` (checked by the caller:
        ``Backend.check_kv_cache_type``)."""

    def decode_batch(self, feeds: Sequence[tuple[EngineSession, int]]) -> None:
        """Compute one token after each session's resident KV, all in one engine call; every
        session's logits are current afterwards. The sessions share one ``batch_group``, at most
        ``max_decode_rows`` of them. On failure no session's resident length changes."""

    def pooled_bytes(self) -> int:
        """KV bytes held by empty contexts kept for reuse by the next session of their size
        (0 where none are kept). Any thread."""

    def drop_pooled(self, keep: tuple[int, str] | None = None) -> int:
        """Engine thread: free every context kept for reuse, but one of ``keep`` (n_ctx, KV
        cache type) when given and pooled (a session about to open reuses it); the KV bytes
        freed."""

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    capabilities: Capabilities
    #: what saved state depends on besides the model file; snapshots record and check it
    #: (with the session's KV cache type as ``kv_type``)
    fingerprint: dict[str, object]
    #: the KV cache types (``modeld.models._aliases.KV_CACHE_TYPES``) its sessions may use
    kv_cache_types: tuple[str, ...]
    #: the device ``modeld serve --device`` asked for (openvino); "" where the backend picks
    #: its device itself (llama: its build and the GPUs' free memory, see models._devices)
    device: str

    def check_kv_cache_type(self, facts: ModelFacts, kv_cache_type: str) -> None:
        """:raises UnsupportedFeature: ``facts``'s model cannot cache its KV as
        ``kv_cache_type`` (one of :attr:`kv_cache_types`) here, with the reason."""

    def load(self, spec: ModelSpec) -> EngineModel:
        """:raises ModelLoadFailed: the engine could not load the file."""


class EmbeddingEngine(Protocol):
    """A model's embedding side on the engine thread: contexts with pooling on, apart from the
    generation lanes, created on demand by :meth:`embed_step` and freed by :meth:`release`.

    ``max_tokens`` bounds one input; one :meth:`embed_step` computes at most ``max_inputs``
    inputs of at most ``step_tokens`` tokens together (as the engine counts them: a padded
    backend counts ``inputs x longest``).
    """

    facts: ModelFacts
    dims: int
    max_tokens: int
    max_inputs: int
    step_tokens: int

    @property
    def contexts(self) -> int:
        """Embedding contexts alive now."""

    def held_bytes(self) -> int:
        """Bytes the embedding contexts alive now hold at most (compute and output buffers;
        the weights are not counted here). Safe from any thread."""

    def context_bytes(self, pooling: str) -> int:
        """Bytes a step with ``pooling`` would add now: a new context's :meth:`held_bytes`
        share, 0 when that context is alive. Safe from any thread."""

    def step_cost(self, lengths: Sequence[int]) -> int:
        """Tokens an :meth:`embed_step` over inputs of these lengths counts against
        ``step_tokens``."""

    def tokenize_parts(self, text: str) -> tuple[list[int], list[int], list[int]]:
        """``text`` as ``(head, body, tail)``: the special tokens the model puts before and
        after a text (BERT: ``[CLS]`` / ``[SEP]``; a decoder: its BOS / nothing) and the text's
        own tokens. Truncation cuts ``body`` only.

        :raises InvalidArgument: a lone surrogate in ``text``.
        """

    def embed_step(self, inputs: Sequence[Sequence[int]], pooling: str) -> Any:
        """One engine call: a float32 array of shape ``(len(inputs), dims)``, each row the
        ``pooling`` ("mean" | "cls" | "last") of that input's last hidden states, not
        normalized. Each input holds 1..``max_tokens`` ids; together they fit one step.

        :raises SessionFatal: the engine failed (nothing is kept between steps).
        """

    def release(self) -> None:
        """Free the embedding contexts (they are made again on the next step)."""

    def close(self) -> None:
        """Free everything, the weights too where this engine owns them."""


@runtime_checkable
class RankingEngine(Protocol):
    """An embedding side that scores (query, document) pairs: a cross-encoder's. Steps are
    planned as :class:`EmbeddingEngine`'s (``max_inputs``, ``step_tokens``, ``max_tokens``)."""

    def rank_parts(self, query: str, document: str) -> tuple[list[int], list[int], list[int]]:
        """The pair's input as ``(head, body, tail)``, ``body`` the document's own tokens
        (truncation cuts it only).

        :raises InvalidArgument: a lone surrogate in either text.
        """

    def rank_step(self, inputs: Sequence[Sequence[int]]) -> Any:
        """One engine call: float32, shape ``(len(inputs),)``, the model's score per pair.

        :raises SessionFatal: the engine failed.
        """


class EmbeddingBackend(Protocol):
    """A backend that embeds."""

    def embedder(self, spec: ModelSpec, shared: EngineModel | None) -> EmbeddingEngine:
        """The embedding side of ``spec``: over ``shared``'s weights (a loaded generative model,
        which stays the owner) or over weights it loads itself (``shared`` None).

        :raises UnsupportedFeature: the engine cannot pool this model's hidden states.
        :raises ModelLoadFailed: the engine could not load the file.
        """
