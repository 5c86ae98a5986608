"""A session's KV cache type: which one it gets, and whether it can have it.

The order of precedence is the request's (``SessionConfig.kv_cache_type``), then the catalog
alias's, then f16. Everything is checked from the model's header and the backend's word before
any weights load or any context opens, so a refused type leaves nothing behind.
"""

from __future__ import annotations

from modeld.backends._base import Backend
from modeld.models._aliases import KV_CACHE_TYPES
from modeld.models._facts import ModelSpec
from modeldconn._errors import InvalidArgument, UnsupportedFeature

__all__ = ["resolve_kv_cache_type"]


def resolve_kv_cache_type(requested: str, spec: ModelSpec, backend: Backend) -> str:
    """The KV cache type a new session of ``spec`` gets: ``requested``, else the alias's, else
    "f16" (one of ``KV_CACHE_TYPES``).

    :raises InvalidArgument: the type is none of ``KV_CACHE_TYPES`` (``field``
        "kv_cache_type", ``allowed`` listing them).
    :raises UnsupportedFeature: this backend, or this model on it, cannot cache its KV so (the
        reason in the message; ``feature`` "kv_cache_type").
    """
    alias = spec.alias.kv_cache_type if spec.alias is not None else ""
    kv_cache_type = requested or alias or "f16"
    if kv_cache_type not in KV_CACHE_TYPES:
        whose = "" if requested or spec.alias is None else f" (alias {spec.alias.name}'s)"
        raise InvalidArgument(
            f"kv_cache_type {kv_cache_type!r}{whose} is none of {', '.join(KV_CACHE_TYPES)}",
            field="kv_cache_type",
            allowed=",".join(KV_CACHE_TYPES),
        )
    if kv_cache_type not in backend.kv_cache_types:
        raise UnsupportedFeature(
            f"the {backend.name} backend caches KV as {', '.join(backend.kv_cache_types)} "
            f"only, not {kv_cache_type}",
            feature="kv_cache_type",
            kv_cache_type=kv_cache_type,
            backend=backend.name,
        )
    backend.check_kv_cache_type(spec.facts, kv_cache_type)
    return kv_cache_type
