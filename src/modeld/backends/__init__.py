"""Inference backends behind one narrow seam (see ``_base``)."""

from __future__ import annotations

from pathlib import Path

from modeld.backends._base import Backend, Capabilities

__all__ = ["Backend", "Capabilities", "make_backend"]


def make_backend(
    name: str,
    *,
    n_threads: int,
    cache_dir: Path,
    precision: str = "",
    batch_rows: int = 0,
    device: str = "CPU",
) -> Backend:
    """The backend for ``modeld serve --backend NAME``; its engine library loads here.

    ``cache_dir`` keeps what a backend derives from a model once (the IR built from a GGUF).
    ``batch_rows``: sessions' decode steps per engine call (0: as many as are bit-exact).
    ``device``: openvino's device (CPU | GPU | NPU | AUTO); llama fits its GPU layers itself.
    """
    if name == "llama":
        from modeld.backends.llama._backend import LlamaBackend

        return LlamaBackend(n_threads=n_threads, batch_rows=batch_rows)
    if name == "openvino":
        from modeld.backends.openvino._backend import OpenVinoBackend

        return OpenVinoBackend(
            n_threads=n_threads,
            cache_dir=cache_dir / "openvino",
            precision=precision,
            batch_rows=batch_rows,
            device=device,
        )
    raise ValueError(f"unknown backend {name!r}")
