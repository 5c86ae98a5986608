"""Model facts for an OpenVINO IR directory, from its ``config.json`` and tokenizer IR.

Like the GGUF reader this loads no weights: Describe answers from files alone, for a model that
may never be loaded.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from modeld.models._facts import ModelFacts

__all__ = ["IR_FILES", "IrError", "facts_from_ir", "is_ir_dir"]

#: what LLMPipeline needs of a directory, and what its digest covers
IR_FILES = (
    "openvino_model.xml",
    "openvino_model.bin",
    "openvino_tokenizer.xml",
    "openvino_tokenizer.bin",
    "openvino_detokenizer.xml",
    "openvino_detokenizer.bin",
    "config.json",
    "generation_config.json",
)


class IrError(ValueError):
    """Not an IR directory, or one whose config cannot be read."""


def is_ir_dir(path: Path) -> bool:
    return path.is_dir() and (path / "openvino_model.xml").is_file()


def _tokenizer_rt_info(path: Path) -> dict[str, str]:
    """The ``rt_info`` entries of the tokenizer IR: chat template and special token ids."""
    info: dict[str, str] = {}
    if not path.is_file():
        return info
    for _, element in ElementTree.iterparse(path, events=("end",)):
        if element.tag in ("chat_template", "bos_token_id", "eos_token_id") and (
            value := element.get("value")
        ):
            info[element.tag] = value
        element.clear()  # the model's layers can be large; only rt_info is wanted
    return info


#: model types whose IR is an encoder: it embeds, it does not generate
ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "nomic_bert"})
_ST_POOLING = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
}


def _st_pooling(directory: Path) -> str:
    """The pooling sentence-transformers' ``1_Pooling/config.json`` declares ("" if none)."""
    try:
        config = json.loads((directory / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    return next((name for key, name in _ST_POOLING.items() if config.get(key)), "")


def _ints(value: Any) -> tuple[int, ...]:
    if isinstance(value, list):
        return tuple(int(v) for v in value if isinstance(v, int))
    return (int(value),) if isinstance(value, int) else ()


def facts_from_ir(
    directory: Path,
    *,
    name: str,
    digest: str,
    fallback_template: str = "",
    fallback_template_source: str = "",
) -> ModelFacts:
    """:raises IrError: no ``config.json`` or one that is not a decoder's config."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise IrError(f"{directory} has no readable config.json: {exc}") from None
    # multimodal checkpoints keep the language model's fields under text_config
    text = config.get("text_config", config)
    try:
        generation = json.loads((directory / "generation_config.json").read_text())
    except (OSError, ValueError):
        generation = {}
    heads = int(text.get("num_attention_heads", 0))
    hidden = int(text.get("hidden_size", 0))
    head_dim = int(text.get("head_dim") or (hidden // heads if heads else 0))
    if not heads or not text.get("num_hidden_layers"):
        raise IrError(f"{directory}/config.json does not describe a decoder")
    rt_info = _tokenizer_rt_info(directory / "openvino_tokenizer.xml")
    template = rt_info.get("chat_template", "")
    eos = _ints(generation.get("eos_token_id")) or _ints(text.get("eos_token_id"))
    if not eos and rt_info.get("eos_token_id", "").lstrip("-").isdigit():
        eos = (int(rt_info["eos_token_id"]),)
    bos = generation.get("bos_token_id", text.get("bos_token_id"))
    files = [directory / f for f in IR_FILES if (directory / f).is_file()]
    declared = _st_pooling(directory)
    model_type = str(text.get("model_type") or config.get("model_type", ""))
    # an encoder IR (feature extraction) embeds; the generative IR returns logits only, and the
    # openvino backend has no hidden states of it to pool
    encoder = bool(declared) or model_type in ENCODER_TYPES
    return ModelFacts(
        name=name,
        path=directory,
        digest=digest,
        file_bytes=sum(f.stat().st_size for f in files),
        architecture=str(text.get("model_type") or config.get("model_type", "")),
        context_length=int(text.get("max_position_embeddings", 0)),
        layers=int(text["num_hidden_layers"]),
        attention_heads=heads,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        value_dim=head_dim,
        sliding_window=int(text.get("sliding_window") or 0),
        vocab_size=int(text.get("vocab_size", 0)),
        chat_template=template or fallback_template,
        chat_template_source="model" if template else fallback_template_source,
        bos_token_id=int(bos) if isinstance(bos, int) else -1,
        eos_token_ids=eos,
        add_bos=bos is not None,
        tasks=("embed",) if encoder else ("generate", "rerank"),
        embedding_dims=hidden if encoder else 0,
        pooling=(declared or "cls") if encoder else "",
    )
