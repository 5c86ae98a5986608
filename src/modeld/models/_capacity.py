"""Capacity arithmetic: how many tokens of KV fit, from a model's facts and the free memory.

Used by Describe and OpenSession (through the session layer) and by ``modeld describe``
offline, so the three always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from modeld.models._facts import ModelFacts
from modeldconn._types import Capacity

__all__ = ["DEFAULT_N_CTX", "MemoryBudget", "capacity_of"]

#: the context a session gets when it asks for none (capped by the model and the memory)
DEFAULT_N_CTX = 4096


@dataclass(frozen=True)
class MemoryBudget:
    """What modeld may spend on weights and KV: free RAM less a reserve, under an optional cap."""

    limit_bytes: int = 0  #: 0 = no cap beyond free memory
    reserve_bytes: int = 256 << 20

    def free_bytes(self, in_use: int) -> int:
        """Bytes free for more weights or KV, given ``in_use`` bytes already spent by modeld."""
        free = psutil.virtual_memory().available - self.reserve_bytes
        if self.limit_bytes:
            free = min(free, self.limit_bytes - in_use)
        return max(0, free)


def capacity_of(
    facts: ModelFacts, free_bytes: int, *, weights_resident: bool, kv_cache_type: str = "f16"
) -> Capacity:
    """The context sizes ``free_bytes`` allows: the weights count against it unless resident.

    ``memory_fit_context`` is in tokens; ``kv_bytes_per_token`` in bytes, with K and V cached
    as ``kv_cache_type`` (``ModelFacts.kv_bytes_per_token_at``: f16 2 B an element, q8_0
    34 B / 32, q4_0 18 B / 32). Describe reports f16, the default type.
    """
    pending_weights = 0 if weights_resident else facts.file_bytes
    per_token_at_type = facts.kv_bytes_per_token_at(kv_cache_type)
    per_token = max(1, per_token_at_type)
    fit = max(0, free_bytes - pending_weights) // per_token
    model_max = facts.context_length or DEFAULT_N_CTX
    return Capacity(
        kv_bytes_per_token=per_token_at_type,
        free_bytes=free_bytes,
        model_max_context=model_max,
        memory_fit_context=min(fit, model_max),
        default_context=min(DEFAULT_N_CTX, model_max, fit),
    )
