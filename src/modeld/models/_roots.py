"""Where a client may point the daemon at model files: the models dir and the allowed roots.

A ModelRef ``path`` comes from any client, possibly a remote one, so it is checked on the fully
resolved path (every symlink followed, ``..`` collapsed): a link planted inside an allowed root
cannot lead out of it. What the operator put in the models dir is trusted as placed, links
included (``models/gemma3-270m-ov`` may point at a converted IR elsewhere): a path that resolves
to one of those entries, or into one, is admitted too. The check runs before anything else looks
at the file, so a refused path says nothing about whether it exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from modeldconn._errors import ModelPathForbidden

__all__ = ["ModelRoots"]


class ModelRoots:
    def __init__(self, models_dir: Path, allowed: Iterable[Path] = ()) -> None:
        self.models_dir = models_dir
        self.allowed = tuple(Path(p).expanduser().absolute() for p in allowed)

    def admit(self, path: Path) -> Path:
        """``path`` made absolute, if it resolves inside a root or an operator's entry.

        :raises ModelPathForbidden: it resolves anywhere else.
        """
        real = path.expanduser().resolve()
        if any(real == root or real.is_relative_to(root) for root in self._resolved_roots()):
            return path.expanduser().absolute()
        roots = ", ".join(str(p) for p in (self.models_dir, *self.allowed))
        raise ModelPathForbidden(
            f"{path} is outside the model roots ({roots}); the daemon's operator can add one "
            "with --allow-model-root",
            path=str(path),
        )

    def _resolved_roots(self) -> Iterator[Path]:
        # Resolved on every call: roots and links may be created after the daemon starts.
        yield self.models_dir.resolve()
        for root in self.allowed:
            yield root.resolve()
        if self.models_dir.is_dir():
            for entry in self.models_dir.iterdir():
                yield entry.resolve()
