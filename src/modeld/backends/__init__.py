"""Inference backends behind one narrow seam (see ``_base``)."""

from __future__ import annotations

from ._base import Backend, Capabilities

__all__ = ["Backend", "Capabilities", "make_backend"]


def make_backend(name: str, *, n_threads: int) -> Backend:
    """The backend for ``modeld serve --backend NAME``; its engine library loads here."""
    if name == "llama":
        from ._llama import LlamaBackend

        return LlamaBackend(n_threads=n_threads)
    from ._absent import AbsentBackend

    return AbsentBackend(name)
