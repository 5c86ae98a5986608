"""Model facts and KV arithmetic, from a GGUF header alone (no weights loaded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modeld.models._aliases import Alias
from modeld.models._gguf import GgufArray, read_gguf_metadata

__all__ = [
    "GGUF_POOLING",
    "KV_ELEMENT_BYTES",
    "KV_TYPE_BYTES",
    "POOLINGS",
    "ModelFacts",
    "ModelSpec",
    "facts_from_gguf",
]

#: K and V are cached as f16 (llama.cpp's default type_k / type_v).
KV_ELEMENT_BYTES = 2
#: bytes per element of each KV cache type, as a fraction (numerator, denominator): ggml's
#: q8_0 block is 32 int8 + one f16 scale (34 B / 32), q4_0 is 32 nibbles + one f16 scale (18 B / 32)
KV_TYPE_BYTES: dict[str, tuple[int, int]] = {"f16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32)}
#: the poolings Embed computes (either backend, any model that can embed)
POOLINGS = ("mean", "cls", "last")
#: llama.cpp's pooling_type values, as the GGUF header writes them (``{arch}.pooling_type``)
GGUF_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


@dataclass(frozen=True)
class ModelFacts:
    name: str
    path: Path
    digest: str
    file_bytes: int
    architecture: str
    context_length: int
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    value_dim: int
    sliding_window: int
    vocab_size: int
    chat_template: str
    chat_template_source: str
    bos_token_id: int
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    add_bos: bool = True
    #: what the model can do: "generate" (sessions), "embed" (Embed), "rerank" (Rerank: a
    #: cross-encoder's score, or a generative model's yes/no answer)
    tasks: tuple[str, ...] = ("generate",)
    #: floats in one Embed vector (the hidden size); 0 when the model cannot embed
    embedding_dims: int = 0
    #: the pooling Embed uses by default (POOLINGS); "rank" for a cross-encoder (it does not
    #: embed); "" when the model cannot embed
    pooling: str = ""

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token costs in every layer, as served.

        Sliding-window layers are *not* capped at their window: the daemon keeps them full size
        (llama.cpp ``swa_full``) so a session's tape can be truncated at any token.
        """
        return self.kv_bytes_per_token_at("f16")

    def kv_bytes_per_token_at(self, kv_cache_type: str) -> int:
        """Bytes of K and V one token costs in every layer with K and V stored as
        ``kv_cache_type`` (KV_TYPE_BYTES: "f16", "q8_0", "q4_0"; "" = f16), rounded up.

        :raises KeyError: an unknown type (callers validate against KV_TYPE_BYTES first).
        """
        numerator, denominator = KV_TYPE_BYTES[kv_cache_type or "f16"]
        elements = self.layers * self.kv_heads * (self.head_dim + self.value_dim)
        return -(-elements * numerator // denominator)


def _first_int(value: Any, default: int) -> int:
    if isinstance(value, list):
        value = value[0] if value else default
    return int(value) if isinstance(value, (int, float)) else default


def facts_from_gguf(
    path: Path,
    *,
    name: str,
    digest: str,
    fallback_template: str = "",
    fallback_template_source: str = "",
) -> ModelFacts:
    """:raises GgufError: not a GGUF file or a damaged header."""
    meta = read_gguf_metadata(path)
    arch = str(meta.get("general.architecture", ""))

    def arch_int(key: str, default: int = 0) -> int:
        return _first_int(meta.get(f"{arch}.{key}"), default)

    heads = arch_int("attention.head_count")
    embedding = arch_int("embedding_length")
    head_dim = arch_int("attention.key_length", embedding // heads if heads else 0)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = tokens.count if isinstance(tokens, GgufArray) else len(tokens or [])
    eos = meta.get("tokenizer.ggml.eos_token_id")
    eos_ids = tuple(int(x) for x in (eos if isinstance(eos, list) else [eos]) if x is not None)
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if isinstance(eot, int) and eot not in eos_ids:
        eos_ids += (eot,)
    template = str(meta.get("tokenizer.chat_template", ""))
    source = "model" if template else fallback_template_source
    # an encoder (BERT and kin: attention.causal false) only embeds; a decoder generates, and
    # llama.cpp pools its hidden states too (mean unless the header declares a pooling)
    # a generative model reranks too (its yes/no answer); one that declares rank pooling is a
    # cross-encoder: it reranks and does nothing else
    causal = bool(meta.get(f"{arch}.attention.causal", True))
    declared = GGUF_POOLING.get(arch_int("pooling_type"), "none")
    pooling = declared if declared in POOLINGS else "mean"
    tasks: tuple[str, ...] = ("generate", "embed", "rerank") if causal else ("embed",)
    if declared == "rank" and not causal:
        tasks, pooling = ("rerank",), "rank"
    return ModelFacts(
        name=name,
        path=path,
        digest=digest,
        file_bytes=path.stat().st_size,
        architecture=arch,
        context_length=arch_int("context_length"),
        layers=arch_int("block_count"),
        attention_heads=heads,
        kv_heads=arch_int("attention.head_count_kv", heads),
        head_dim=head_dim,
        value_dim=arch_int("attention.value_length", head_dim),
        sliding_window=arch_int("attention.sliding_window"),
        vocab_size=vocab,
        chat_template=template or fallback_template,
        chat_template_source=source,
        bos_token_id=_first_int(meta.get("tokenizer.ggml.bos_token_id"), -1),
        eos_token_ids=eos_ids,
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
        tasks=tasks,
        embedding_dims=embedding,
        pooling=pooling,
    )


@dataclass(frozen=True)
class ModelSpec:
    """A resolved, verified model: what sessions and the engine are keyed by."""

    facts: ModelFacts
    #: the catalog alias the reference named, if it named one (its defaults apply); not part
    #: of the key: two aliases of one file share its weights
    alias: Alias | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.facts.path), self.facts.digest)
