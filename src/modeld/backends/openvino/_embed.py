"""Embeddings on OpenVINO: a feature-extraction IR driven directly, pooled in numpy.

openvino-genai's ``TextEmbeddingPipeline`` would do the same inference, but it tokenizes and
truncates by itself (an input past ``max_length`` is silently cut), takes text only, and runs a
batch as one inference: modeld needs explicit truncation with numbers, token-id inputs, a pooling
override, and a batch split into steps that take turns with decoding sessions on the engine
thread. So the IR (``input_ids``, ``attention_mask``, ``token_type_ids`` -> ``last_hidden_state``)
is compiled once and fed padded batches; the tokenizer IR (openvino-tokenizers) makes the ids.
The infer request (the "context", with its activation buffers) is made on demand and freed when
the model idles.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as ov_genai

from modeld.backends._base import check_text
from modeld.models._facts import ModelFacts
from modeldconn._errors import ModelLoadFailed, SessionFatal

__all__ = ["OpenVinoEmbedder"]

#: inputs one inference computes at most
MAX_INPUTS = 64
#: padded tokens (inputs x longest) one inference computes at most
STEP_TOKENS = 1024


class OpenVinoEmbedder:
    def __init__(self, facts: ModelFacts, core: ov.Core, n_threads: int, precision: str) -> None:
        directory = Path(facts.path)
        # f32 unless the operator asked otherwise: bf16 moves vectors by ~1e-3, which is more
        # than a batch may differ from single calls
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": n_threads,
            "INFERENCE_PRECISION_HINT": precision or "f32",
        }
        try:
            model = core.read_model(str(directory / "openvino_model.xml"))
            self._inputs = {port.get_any_name() for port in model.inputs}
            self.compiled: Any = core.compile_model(model, "CPU", config)
            self.tokenizer = ov_genai.Tokenizer(str(directory))
        except RuntimeError as exc:
            raise ModelLoadFailed(
                f"OpenVINO could not load {directory}: {str(exc).strip().splitlines()[-1]}",
                path=str(directory),
            ) from None
        if "input_ids" not in self._inputs or "attention_mask" not in self._inputs:
            raise ModelLoadFailed(
                f"{directory} is not a feature-extraction IR (inputs {sorted(self._inputs)})",
                path=str(directory),
            )
        self.facts = facts
        self.dims = facts.embedding_dims
        self.max_tokens = facts.context_length
        self.max_inputs = MAX_INPUTS
        self.step_tokens = max(STEP_TOKENS, self.max_tokens)
        self._request: Any = None

    @property
    def contexts(self) -> int:
        return 0 if self._request is None else 1

    def _request_bytes(self) -> int:
        """The infer request's buffers at their largest, an upper bound: ``step_tokens`` padded
        tokens of 18 activation widths, and attention scores and their softmax for a step of
        the longest inputs (``step_tokens / max_tokens`` of them, ``max_tokens`` squared)."""
        tokens, longest = self.step_tokens, max(1, self.max_tokens)
        heads = max(1, self.facts.attention_heads)
        rows = max(1, tokens // longest)
        attention = 2 * rows * longest * longest * heads * 4
        return (2 << 20) + tokens * self.dims * 4 * 18 + attention

    def held_bytes(self) -> int:
        """See ``EmbeddingEngine.held_bytes``."""
        return 0 if self._request is None else self._request_bytes()

    def context_bytes(self, pooling: str) -> int:
        """See ``EmbeddingEngine.context_bytes``: one request serves every pooling."""
        return 0 if self._request is not None else self._request_bytes()

    def step_cost(self, lengths: Sequence[int]) -> int:
        return len(lengths) * max(lengths, default=0)

    def _encode(self, text: str, add_special: bool) -> list[int]:
        encoded = self.tokenizer.encode(text, add_special_tokens=add_special)
        return [int(t) for t in encoded.input_ids.data[0]]

    def tokenize_parts(self, text: str) -> tuple[list[int], list[int], list[int]]:
        """See ``EmbeddingEngine.tokenize_parts``."""
        check_text(text, "text")
        body = self._encode(text, False)
        whole = self._encode(text, True)
        for start in range(len(whole) - len(body) + 1):
            if whole[start : start + len(body)] == body:
                return whole[:start], body, whole[start + len(body) :]
        return [], whole, []

    def embed_step(self, inputs: Sequence[Sequence[int]], pooling: str) -> np.ndarray:
        """See ``EmbeddingEngine.embed_step``: one inference over the inputs, right-padded."""
        lengths = np.array([len(ids) for ids in inputs])
        width = int(lengths.max())
        ids = np.zeros((len(inputs), width), dtype=np.int64)
        mask = np.zeros((len(inputs), width), dtype=np.int64)
        for row, tokens in enumerate(inputs):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        if self._request is None:
            self._request = self.compiled.create_infer_request()
        try:
            self._request.infer(feed)
        except RuntimeError as exc:
            raise SessionFatal(f"OpenVINO embedding inference failed: {exc}") from None
        hidden = np.asarray(self._request.get_output_tensor(0).data, dtype=np.float32)
        if pooling == "cls":
            return np.ascontiguousarray(hidden[:, 0, :])
        if pooling == "last":
            return np.ascontiguousarray(hidden[np.arange(len(inputs)), lengths - 1, :])
        weights = mask[:, :, None].astype(np.float32)
        pooled: np.ndarray = (hidden * weights).sum(axis=1) / lengths[:, None].astype(np.float32)
        return pooled

    def release(self) -> None:
        self._request = None

    def close(self) -> None:
        self._request = None
        self.compiled = None
