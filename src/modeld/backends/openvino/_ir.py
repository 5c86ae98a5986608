"""The model's IR for the OpenVINO backend: built once from a GGUF, then made paged.

A GGUF file is read by openvino-genai itself, which writes the IR it builds into a cache once
(in a child process, see ``ir_from_gguf``). On every load the IR goes through OpenVINO's own
PagedAttention transformation, so K and V live in blocks of the pool modeld allocates
(``_block_pool``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops
from openvino._offline_transformations import paged_attention_transformation

from modeld.backends.openvino._block_pool import BLOCK_SIZE
from modeld.models._facts import ModelFacts
from modeldconn._errors import ModelLoadFailed

__all__ = ["IR_MODEL", "ir_from_gguf", "paged_model"]

IR_MODEL = "openvino_model.xml"
_gguf_lock = threading.Lock()


#: run in a child process: openvino-genai holds the GIL while it builds a model, which would
#: starve the daemon's lease renewals for as long as the conversion takes
_GGUF_TO_IR = (
    "import sys, openvino_genai\n"
    "openvino_genai.LLMPipeline(sys.argv[1], 'CPU', enable_save_ov_model=True)\n"
)


def ir_from_gguf(gguf: Path, cache: Path) -> Path:
    """The IR openvino-genai builds from ``gguf``, written once into ``cache`` and reused."""
    if (cache / IR_MODEL).is_file():
        return cache
    with _gguf_lock:
        if (cache / IR_MODEL).is_file():
            return cache
        cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".gguf-ir-", dir=cache.parent))
        try:
            (work / gguf.name).symlink_to(gguf.absolute())
            # openvino-genai reads the GGUF and serialises the model and tokenizers beside it
            done = subprocess.run(
                [sys.executable, "-c", _GGUF_TO_IR, str(work / gguf.name)],
                capture_output=True,
                text=True,
            )
            (work / gguf.name).unlink()
            if done.returncode != 0 or not (work / IR_MODEL).is_file():
                why = (done.stderr.strip().splitlines() or ["wrote no IR"])[-1]
                raise ModelLoadFailed(f"openvino-genai cannot read {gguf}: {why}", path=str(gguf))
            os.replace(work, cache)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return cache


def paged_model(model: ov.Model, facts: ModelFacts) -> None:
    """Turn the stateful IR into the paged one, with an LM head over selected rows only.

    The new ``logits_indices`` input names the token rows to project onto the vocabulary:
    prefill would otherwise compute, for Gemma, 262,144 logits for every prompt token only to
    keep the last row.
    """
    paged_attention_transformation(model)
    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() != "MatMul":
        if node.get_input_size() == 0:
            raise ModelLoadFailed("no LM head (MatMul) feeds the model's logits")
        node = node.input_value(0).get_node()
    rows = ops.parameter([-1], ov.Type.i64, name="logits_indices")
    rows.output(0).get_tensor().set_names({"logits_indices"})
    selected = ops.gather(node.input_value(0), rows, np.array(0, np.int64))
    node.input(0).replace_source_output(selected.output(0))
    model.add_parameters([rows])
    for parameter in model.get_parameters():
        name = parameter.get_friendly_name()
        if name.startswith(("key_cache.", "value_cache.")):
            width = facts.head_dim if name.startswith("key") else facts.value_dim
            # f16 unless the plugin computes in bf16, where it keeps the cache in bf16
            parameter.set_element_type(ov.Type.f16)
            parameter.set_partial_shape(ov.PartialShape([-1, facts.kv_heads, BLOCK_SIZE, width]))
    model.validate_nodes_and_infer_types()
