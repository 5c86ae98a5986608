"""What models there are: every catalog alias, every GGUF file and IR directory under the model
roots, and the packaged models not assembled yet (``modeld models list``, the ListModels RPC).

Each entry's facts come from the file's header (or the IR's config.json): no weights are read.
Its digest comes from the digest cache (``_digests``): hashed once per file version, so a second
listing hashes nothing. The scan goes at most 3 directories deep under each root, skips hidden
names and does not descend into an IR directory; a root's links are followed (``models/`` often
holds links to files kept elsewhere), and a file reached twice is listed once.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from modeld.models._aliases import Alias
from modeld.models._catalog import PACKAGED_MODELS, ModelCatalog, names_a_path
from modeld.models._facts import facts_from_gguf
from modeld.models._gguf import GgufError
from modeld.models._ir_facts import IrError, facts_from_ir, is_ir_dir

__all__ = ["InventoryEntry", "list_models"]

#: directories below a root the scan enters at most
_MAX_DEPTH = 3


@dataclass(frozen=True)
class InventoryEntry:
    """One row of the listing (the wire's ModelEntry)."""

    alias: str  #: "" for a file no alias names
    path: str  #: absolute; for a packaged model not yet assembled, where it will be
    source: str  #: "catalog" | "file" | "packaged"
    backend: str  #: the backend type that reads it: "llama" (GGUF) | "openvino" (IR)
    tasks: tuple[str, ...] = ()
    size_bytes: int = 0
    digest: str = ""  #: sha256 hex
    architecture: str = ""
    loaded: bool = False  #: weights resident in the daemon that answered (False offline)
    warmup: str = ""  #: aliases: "eager" | "background" | "lazy"
    error: str = ""  #: why its facts could not be read


@dataclass(frozen=True)
class _Facts:
    backend: str
    tasks: tuple[str, ...] = ()
    size_bytes: int = 0
    digest: str = ""
    architecture: str = ""
    error: str = ""


def _facts(catalog: ModelCatalog, path: Path) -> _Facts:
    backend = "openvino" if path.is_dir() else "llama"
    try:
        digest = catalog.digests.digest(path)
        read = facts_from_ir if path.is_dir() else facts_from_gguf
        facts = read(path, name=path.name, digest=digest)
    except OSError as exc:
        return _Facts(backend, error=f"cannot read {path}: {exc.strerror or exc}")
    except (GgufError, IrError) as exc:
        return _Facts(backend, error=str(exc))
    return _Facts(backend, facts.tasks, facts.file_bytes, digest, facts.architecture)


def _walk(root: Path) -> Iterator[Path]:
    """GGUF files and IR directories under ``root`` (or ``root`` itself when it is one)."""
    if root.is_file():
        if root.name.endswith(".gguf"):
            yield root
        return
    if is_ir_dir(root):
        yield root
        return
    base_depth = len(root.parts)
    for directory, subdirs, files in os.walk(root, followlinks=True):
        here = Path(directory)
        depth = len(here.parts) - base_depth
        kept = []
        for name in sorted(subdirs):
            if name.startswith("."):
                continue
            if is_ir_dir(here / name):
                yield here / name
            elif depth < _MAX_DEPTH:
                kept.append(name)
        subdirs[:] = kept
        for name in sorted(files):
            if name.endswith(".gguf") and not name.startswith("."):
                yield here / name


def _alias_path(catalog: ModelCatalog, alias: Alias) -> tuple[Path | None, str]:
    """The file or IR an alias names, and why there is none (without assembling anything)."""
    if names_a_path(alias.model):
        target = catalog.alias_target(alias)
        return (target, "") if target.exists() else (None, f"no model at {target}")
    models = catalog.models_dir
    for candidate in (models / alias.model, models / f"{alias.model}.gguf"):
        if candidate.is_file() or is_ir_dir(candidate):
            return candidate, ""
    packaged = PACKAGED_MODELS.get(alias.model)
    if packaged is None:
        return None, f"no model named {alias.model!r} in {models}"
    backend = alias.backend or catalog.backend
    if backend == "openvino" and packaged.openvino_ir:
        ir = models / packaged.openvino_ir
        return (ir, "") if is_ir_dir(ir) else (None, f"no IR at {ir}")
    target = models / packaged.file_name
    if target.is_file():
        return target, ""
    return None, f"packaged model {alias.model!r}: assembled into {target} on first use"


def list_models(
    catalog: ModelCatalog, *, loaded_digests: Collection[str] = ()
) -> list[InventoryEntry]:
    """Aliases first (in the catalog's order), then files and IR directories by path, then the
    packaged models not assembled yet. ``loaded_digests``: the digests whose weights the
    daemon holds (marks ``loaded``).

    Hashes files it has not seen (seconds per GB, once); call it off the event loop.
    """
    entries: list[InventoryEntry] = []
    for alias in catalog.aliases.aliases.values():
        path, why = _alias_path(catalog, alias)
        backend = alias.backend or ("openvino" if path is not None and path.is_dir() else "llama")
        if path is None:
            entries.append(
                InventoryEntry(
                    alias.name,
                    str(catalog.alias_target(alias)) if names_a_path(alias.model) else "",
                    "catalog",
                    backend,
                    alias.tasks,
                    warmup=alias.warmup,
                    error=why,
                )
            )
            continue
        facts = _facts(catalog, path)
        entries.append(
            InventoryEntry(
                alias.name,
                str(path.absolute()),
                "catalog",
                alias.backend or facts.backend,
                alias.tasks or facts.tasks,
                facts.size_bytes,
                facts.digest,
                facts.architecture,
                bool(facts.digest) and facts.digest in loaded_digests,
                alias.warmup,
                facts.error,
            )
        )
    packaged_files = {p.file_name: name for name, p in PACKAGED_MODELS.items()}
    seen: set[Path] = set()
    for root in (catalog.models_dir, *catalog.roots.allowed):
        if not root.exists():
            continue
        for path in _walk(root):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            facts = _facts(catalog, path)
            entries.append(
                InventoryEntry(
                    "",
                    str(path.absolute()),
                    "packaged" if path.name in packaged_files else "file",
                    facts.backend,
                    facts.tasks,
                    facts.size_bytes,
                    facts.digest,
                    facts.architecture,
                    bool(facts.digest) and facts.digest in loaded_digests,
                    error=facts.error,
                )
            )
    for name, packaged in PACKAGED_MODELS.items():
        target = catalog.models_dir / packaged.file_name
        if target.resolve() not in seen:
            entries.append(
                InventoryEntry(
                    "",
                    str(target.absolute()),
                    "packaged",
                    "llama",
                    error=f"not assembled yet: {name} is assembled from its PyPI package "
                    "on first use",
                )
            )
    return entries
