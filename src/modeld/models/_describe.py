"""`modeld describe`: model facts and capacity, computed locally from the file's header."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from modeld.models._capacity import MemoryBudget, capacity_of
from modeld.models._catalog import ModelCatalog, names_a_path

__all__ = ["describe_locally"]


def describe_locally(root: Path, model: str, *, as_json: bool) -> str:
    """:raises RemoteError: the same typed errors Describe answers with."""
    by_path = names_a_path(model)
    # Offline, as the person who typed the path: their own file is theirs to read.
    catalog = ModelCatalog(root, backend="", allowed_roots=[Path(model)] if by_path else [])
    spec = catalog.resolve("" if by_path else model, "", "", model if by_path else "")
    facts = spec.facts
    free = MemoryBudget().free_bytes(0)
    fit = capacity_of(facts, free, weights_resident=False).memory_fit_context
    if as_json:
        body = {
            **dataclasses.asdict(facts),
            "path": str(facts.path),
            "kv_bytes_per_token": facts.kv_bytes_per_token,
            "free_bytes": free,
            "memory_fit_context": fit,
        }
        return json.dumps(body, indent=2)
    template = facts.chat_template_source or "none"
    return "\n".join(
        [
            f"model            {facts.name}  ({facts.path})",
            f"digest           sha256:{facts.digest}",
            f"file             {facts.file_bytes / 1e6:.1f} MB, {facts.architecture}",
            f"context          {facts.context_length} trained",
            f"layers           {facts.layers}, {facts.attention_heads} heads, "
            f"{facts.kv_heads} KV heads, head dim {facts.head_dim}",
            f"sliding window   {facts.sliding_window or 'none'}",
            f"vocab            {facts.vocab_size}, BOS {facts.bos_token_id}, "
            f"EOS {list(facts.eos_token_ids)}",
            f"chat template    {template}",
            f"KV per token     {facts.kv_bytes_per_token} B",
            f"fits in memory   {fit} tokens ({free / 2**30:.1f} GiB free)",
        ]
    )
