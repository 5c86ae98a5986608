"""The OpenVINO backend: the stateful LLM IR driven directly through the OpenVINO runtime.

openvino-genai's pipelines own their KV cache and expose reuse only as a side effect of a prefix
cache, so modeld drives the same stateful IR that ``LLMPipeline`` runs, one infer request per
session: the request's state variables *are* the session's KV. Truncation slices them, sharing
and snapshots copy them, and every reuse figure is the state's own length, read from the engine.
A GGUF file is read by openvino-genai itself, which writes the IR it builds into a cache once.
Tokenizer and detokenizer are the openvino-tokenizers IRs, through ``openvino_genai.Tokenizer``.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as ov_genai
from openvino import opset13 as ops

from modeldconn._errors import ContextOverflow, ModelLoadFailed, SessionFatal, UnsupportedFeature

from ._base import Capabilities, EngineState, SamplingParams
from ._facts import ModelFacts, ModelSpec
from ._numpy_sampler import NumpySampler

__all__ = ["OpenVinoBackend", "ir_from_gguf"]

IR_MODEL = "openvino_model.xml"
_SEQ_AXIS = 2  # KV state layout of optimum and openvino-genai IRs: [batch, kv_heads, seq, head_dim]
_gguf_lock = threading.Lock()


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
            ov_genai.LLMPipeline(str(work / gguf.name), "CPU", enable_save_ov_model=True)
            (work / gguf.name).unlink()
            if not (work / IR_MODEL).is_file():
                raise ModelLoadFailed(f"openvino-genai wrote no IR for {gguf}", path=str(gguf))
            os.replace(work, cache)
        except RuntimeError as exc:
            raise ModelLoadFailed(
                f"openvino-genai cannot read {gguf}: {str(exc).strip().splitlines()[-1]}",
                path=str(gguf),
            ) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return cache


def _logits_of_last_token_only(model: ov.Model) -> None:
    """Compute the LM head for the last position only, as openvino-genai does on load.

    Prefill would otherwise project every prompt token onto the whole vocabulary (for Gemma,
    262,144 floats a token) only to throw all but one row away.
    """
    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() != "MatMul":
        if node.get_input_size() == 0:
            return
        node = node.input_value(0).get_node()
    hidden = node.input_value(0)
    last = ops.slice(
        hidden,
        np.array([-1], np.int64),
        np.array([np.iinfo(np.int64).max], np.int64),
        np.array([1], np.int64),
        np.array([1], np.int64),
    )
    node.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()


class OpenVinoSession:
    def __init__(self, model: OpenVinoModel, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.request = model.compiled.create_infer_request()
        self.kv_len = 0
        self._logits: np.ndarray | None = None  # of the last resident token, when current
        self._beam = np.zeros(1, np.int32)

    def truncate(self, keep: int) -> None:
        if keep >= self.kv_len:
            return
        if keep == 0:
            self.request.reset_state()
        else:
            for state in self.request.query_state():
                kept = np.ascontiguousarray(state.state.data[:, :, :keep, :])
                state.state = ov.Tensor(kept)
        self.kv_len = keep
        self._logits = None

    def prefill(self, tokens: Sequence[int]) -> None:
        if not tokens:
            return
        if self.kv_len + len(tokens) > self.n_ctx:
            raise ContextOverflow(
                f"{len(tokens)} more tokens do not fit: {self.kv_len} resident, n_ctx {self.n_ctx}",
                stage="prefill",
                resident=self.kv_len,
                additional=len(tokens),
                n_ctx=self.n_ctx,
            )
        count = len(tokens)
        start = self.kv_len
        try:
            self.request.infer(
                {
                    "input_ids": np.asarray(tokens, np.int64).reshape(1, count),
                    "attention_mask": np.ones((1, start + count), np.int64),
                    "position_ids": np.arange(start, start + count, dtype=np.int64).reshape(1, -1),
                    "beam_idx": self._beam,
                }
            )
        except RuntimeError as exc:
            # the request's state is unknown after a failed inference: start it again empty
            self.request.reset_state()
            self.kv_len = 0
            self._logits = None
            raise SessionFatal(f"OpenVINO inference failed: {exc}") from None
        self.kv_len = start + count
        self._logits = self.request.get_tensor("logits").data[0, -1].copy()

    def logits_current(self) -> bool:
        return self._logits is not None and self.kv_len > 0

    def current_logits(self) -> np.ndarray:
        if self._logits is None:
            raise SessionFatal("no logits for the last resident token")
        return self._logits

    def sampler(self, params: SamplingParams, history: Sequence[int]) -> NumpySampler:
        return NumpySampler(
            self.current_logits, params, history, self.model.end_of_generation_ids()
        )

    def save_state(self) -> EngineState:
        """Every KV state variable, in the precision the engine keeps it, plus the logits."""
        buffer = io.BytesIO()
        kv_type = self.model.kv_numpy_type
        arrays = {s.name: s.state.data.astype(kv_type) for s in self.request.query_state()}
        np.savez(buffer, **arrays)
        current = self._logits if self.logits_current() else None
        logits = None if current is None else current.astype(np.float32).tobytes()
        return EngineState(buffer.getvalue(), self.kv_len, logits)

    def load_state(self, state: EngineState) -> None:
        self.request.reset_state()
        self.kv_len = 0
        self._logits = None
        if state.kv_len:
            try:
                with np.load(io.BytesIO(state.kv), allow_pickle=False) as saved:
                    for variable in self.request.query_state():
                        kv = np.ascontiguousarray(saved[variable.name], dtype=np.float32)
                        if kv.shape[_SEQ_AXIS] != state.kv_len:
                            raise ValueError(f"{variable.name} holds {kv.shape[_SEQ_AXIS]} tokens")
                        variable.state = ov.Tensor(kv)
            except (KeyError, ValueError, OSError) as exc:
                self.request.reset_state()
                raise SessionFatal(f"the saved state does not fit this model: {exc}") from None
        self.kv_len = state.kv_len
        if state.logits is not None:
            self._logits = np.frombuffer(state.logits, dtype=np.float32).copy()

    def close(self) -> None:
        self.request.reset_state()


class OpenVinoModel:
    def __init__(
        self,
        facts: ModelFacts,
        compiled: Any,
        tokenizer: Any,
        n_threads: int,
        n_batch: int,
        kv_numpy_type: type[np.floating[Any]],
        ir_dir: Path,
        core: ov.Core,
    ) -> None:
        self._core = core
        self.facts = facts
        self.compiled = compiled
        self.tokenizer = tokenizer
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.kv_numpy_type = kv_numpy_type
        self.ir_dir = ir_dir
        self._vocab: list[bytes] | None = None
        self._pieces: dict[int, bytes] = {}
        self._eog = sorted({*facts.eos_token_ids, int(tokenizer.get_eos_token_id())} - {-1})

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        encoded = self.tokenizer.encode(text, add_special_tokens=add_special)
        return [int(t) for t in encoded.input_ids.data[0]]

    def detokenize(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def piece(self, token: int) -> bytes:
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._piece_bytes(token)
        return cached

    def _piece_bytes(self, token: int) -> bytes:
        text = str(self.tokenizer.decode([token], skip_special_tokens=True))
        if "\ufffd" not in text:
            return text.encode("utf-8")
        # a token that is part of a UTF-8 sequence: its bytes come from the vocabulary entry
        if self._vocab is None:
            self._vocab = _detokenizer_vocab(self._core, self.ir_dir)
        return _raw_piece(self._vocab[token]) if token < len(self._vocab) else b""

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._eog

    def end_of_generation_ids(self) -> list[int]:
        return self._eog

    def render_chat(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> str:
        if not self.facts.chat_template:
            raise UnsupportedFeature("this model has no chat template; send text or token ids")
        history = [{"role": role, "content": content} for role, content in messages]
        try:
            return str(
                self.tokenizer.apply_chat_template(
                    history,
                    add_generation_prompt=add_generation_prompt,
                    chat_template=self.facts.chat_template,
                )
            )
        except RuntimeError as exc:
            raise UnsupportedFeature(f"the chat template cannot be rendered: {exc}") from None

    def open_session(self, n_ctx: int) -> OpenVinoSession:
        return OpenVinoSession(self, n_ctx)

    def close(self) -> None:
        self.compiled = None


def _detokenizer_vocab(core: ov.Core, ir_dir: Path) -> list[bytes]:
    """Each token's bytes as the detokenizer IR stores them (its VocabDecoder's constants).

    ``Tokenizer.get_vocab_vector`` cannot return entries that are not valid UTF-8 on their own,
    and those are exactly the ones a streaming client needs byte-exact.
    """
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)

    # the Core must outlive the model: it owns the extension the model's operations live in
    model = core.read_model(str(ir_dir / "openvino_detokenizer.xml"))
    for node in model.get_ordered_ops():
        if node.get_type_name() == "VocabDecoder":
            begins, ends, chars = (
                np.array(node.input_value(i).get_node().get_data()) for i in (1, 2, 3)
            )
            raw = chars.tobytes()
            return [raw[b:e] for b, e in zip(begins.tolist(), ends.tolist(), strict=True)]
    return []


def _raw_piece(entry: bytes) -> bytes:
    """A vocabulary entry as text bytes: SentencePiece byte tokens and word-start marks resolved."""
    if len(entry) == 6 and entry.startswith(b"<0x") and entry.endswith(b">"):
        return bytes([int(entry[3:5], 16)])
    return entry.replace("\u2581".encode(), b" ")


class OpenVinoBackend:
    name = "openvino"
    capabilities = Capabilities(
        token_level_truncation=True,  # the state variables are sliced at any token
        kv_copy_between_sessions=True,  # state tensors copied from one request to another
        native_state_snapshot=True,  # the state tensors themselves, saved and set back
        batched_decode=False,
        chat_template=True,
        grammar=False,
    )

    def __init__(self, n_threads: int, cache_dir: Path, n_batch: int = 512) -> None:
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.cache_dir = cache_dir
        self._core = ov.Core()
        self.fingerprint: dict[str, object] = {
            "backend": "openvino",
            "engine": f"openvino {ov.get_version()}",
            "kv_type": "f16",
        }

    def load(self, spec: ModelSpec) -> OpenVinoModel:
        path = spec.facts.path
        ir = path if path.is_dir() else ir_from_gguf(path, self.cache_dir / spec.facts.digest)
        try:
            model = self._core.read_model(str(ir / IR_MODEL))
            _logits_of_last_token_only(model)
            compiled = self._core.compile_model(
                model,
                "CPU",
                {
                    "INFERENCE_NUM_THREADS": self.n_threads,
                    "PERFORMANCE_HINT": "LATENCY",
                    "KV_CACHE_PRECISION": "f16",
                    "INFERENCE_PRECISION_HINT": "f32",
                },
            )
            tokenizer = ov_genai.Tokenizer(str(ir))
        except RuntimeError as exc:
            raise ModelLoadFailed(
                f"OpenVINO could not load {ir}: {str(exc).strip().splitlines()[-1]}",
                path=str(ir),
            ) from None
        return OpenVinoModel(
            spec.facts,
            compiled,
            tokenizer,
            self.n_threads,
            self.n_batch,
            np.float16,
            ir,
            self._core,
        )
