"""The OpenVINO backend: the LLM IR in its paged-attention form, driven through the runtime.

openvino-genai's pipelines own their KV cache and expose reuse only as a side effect of a prefix
cache, so modeld drives the model itself. On load the IR goes through OpenVINO's own
PagedAttention transformation (what openvino-genai's continuous-batching pipeline runs): K and V
live in blocks of a cache that modeld allocates, and each call names the blocks and the number of
resident tokens of the sequence it extends. A session is a list of blocks and a length:
truncation is a new length, sharing and snapshots copy blocks, every reuse figure is the length
the engine was told to attend to. Paged attention also honours sliding windows natively (Gemma 3:
15 of 18 layers attend to 512 tokens), where the stateful IR attends to everything and masks.
A GGUF file is read by openvino-genai itself, which writes the IR it builds into a cache once.
Tokenizer and detokenizer are the openvino-tokenizers IRs, through ``openvino_genai.Tokenizer``.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as ov_genai
from openvino import opset13 as ops
from openvino._offline_transformations import paged_attention_transformation

from modeld.backends._base import Capabilities, EngineState, SamplingParams, check_room
from modeld.backends.openvino._sampler import NumpySampler
from modeld.models._facts import ModelFacts, ModelSpec
from modeldconn._errors import ModelLoadFailed, SessionFatal, UnsupportedFeature

__all__ = ["BLOCK_SIZE", "OpenVinoBackend", "ir_from_gguf"]

IR_MODEL = "openvino_model.xml"
#: tokens per KV block: the CPU plugin's paged-attention block size
BLOCK_SIZE = 32
_FIRST_POOL_BLOCKS = 64
#: sessions' decode steps one inference computes at most
MAX_DECODE_ROWS = 16
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


def _paged_model(model: ov.Model, facts: ModelFacts) -> None:
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


class _BlockPool:
    """The KV cache of every session of one model: per layer, K and V blocks in arrays that the
    infer request reads and writes in place. Grows by doubling; freed blocks are reused."""

    def __init__(self, compiled: Any, request: Any) -> None:
        self._request = request
        self._layouts: dict[str, tuple[Any, tuple[int, ...]]] = {}
        for port in compiled.inputs:
            name = port.get_any_name()
            if name.startswith(("key_cache.", "value_cache.")):
                tail = tuple(int(d.get_length()) for d in list(port.get_partial_shape())[1:])
                self._layouts[name] = (port.get_element_type(), tail)
        self.arrays: dict[str, np.ndarray] = {}
        self.capacity = 0
        self._free: list[int] = []
        self._grow(_FIRST_POOL_BLOCKS)

    @property
    def element_type(self) -> str:
        return str(next(iter(self._layouts.values()))[0].get_type_name())

    def _grow(self, capacity: int) -> None:
        for name, (element_type, tail) in self._layouts.items():
            # 16-bit caches are held as raw uint16 (numpy has no bf16) and typed for OpenVINO
            dtype = np.float32 if element_type == ov.Type.f32 else np.uint16
            array = np.zeros((capacity, *tail), dtype)
            if name in self.arrays:
                array[: self.capacity] = self.arrays[name]
            self.arrays[name] = array
            self._request.set_tensor(name, ov.Tensor(array, list(array.shape), element_type))
        self._free.extend(range(capacity - 1, self.capacity - 1, -1))
        self.capacity = capacity

    def take(self, count: int) -> list[int]:
        if count > len(self._free):
            self._grow(max(2 * self.capacity, self.capacity + count - len(self._free)))
        taken = self._free[-count:] if count else []
        del self._free[len(self._free) - count :]
        return taken

    def give_back(self, blocks: Sequence[int]) -> None:
        self._free.extend(blocks)

    def read(self, blocks: Sequence[int]) -> dict[str, np.ndarray]:
        index = np.asarray(blocks, np.int64)
        return {name: array[index] for name, array in self.arrays.items()}

    def write(self, blocks: Sequence[int], saved: Any) -> None:
        index = np.asarray(blocks, np.int64)
        for name, array in self.arrays.items():
            data = saved[name]
            if data.shape != (len(blocks), *array.shape[1:]) or data.dtype != array.dtype:
                raise ValueError(f"{name} is {data.dtype}{data.shape}, not this model's layout")
            array[index] = data


class OpenVinoSession:
    def __init__(self, model: OpenVinoModel, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.kv_len = 0
        self.blocks: list[int] = []
        self._logits: np.ndarray | None = None  # of the last resident token, when current

    @property
    def batch_group(self) -> object:
        """Every session of a model lives in its block pool: any of them decode together."""
        return self.model

    def hold_blocks_for(self, tokens: int) -> None:
        missing = math.ceil(tokens / BLOCK_SIZE) - len(self.blocks)
        if missing > 0:
            self.blocks.extend(self.model.pool.take(missing))

    def truncate(self, keep: int) -> None:
        if keep < self.kv_len:
            self.kv_len = keep
            self._logits = None
        self._release_blocks_past(self.kv_len)

    def _release_blocks_past(self, tokens: int) -> None:
        kept = math.ceil(tokens / BLOCK_SIZE)
        self.model.pool.give_back(self.blocks[kept:])
        del self.blocks[kept:]

    def prefill(self, tokens: Sequence[int]) -> None:
        if not tokens:
            return
        check_room(self.kv_len, len(tokens), self.n_ctx)
        start = self.kv_len
        self.hold_blocks_for(start + len(tokens))
        try:
            (logits,) = self.model.forward([(tokens, start, self.blocks)])
        except RuntimeError as exc:
            self.undo_past(start)
            raise SessionFatal(f"OpenVINO inference failed: {exc}") from None
        self.accept(logits, start + len(tokens))

    def undo_past(self, start: int) -> None:
        """After a failed inference: what it wrote past ``start`` is never attended to (the
        length bounds reads); the blocks held for it go back."""
        self._logits = None
        self._release_blocks_past(start)

    def accept(self, logits: np.ndarray, kv_len: int) -> None:
        self._logits = logits
        self.kv_len = kv_len

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
        """The session's KV blocks of every layer, as the engine holds them, plus the logits."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.model.pool.read(self.blocks))  # type: ignore[arg-type]
        current = self._logits if self.logits_current() else None
        logits = None if current is None else current.astype(np.float32).tobytes()
        return EngineState(buffer.getvalue(), self.kv_len, logits)

    def load_state(self, state: EngineState) -> None:
        self.truncate(0)
        if state.kv_len:
            self.hold_blocks_for(state.kv_len)
            try:
                with np.load(io.BytesIO(state.kv), allow_pickle=False) as saved:
                    self.model.pool.write(self.blocks, saved)
            except (KeyError, ValueError, OSError) as exc:
                self.truncate(0)
                raise SessionFatal(f"the saved state does not fit this model: {exc}") from None
        self.kv_len = state.kv_len
        if state.logits is not None:
            self._logits = np.frombuffer(state.logits, dtype=np.float32).copy()

    def close(self) -> None:
        self.truncate(0)


class OpenVinoModel:
    def __init__(
        self,
        facts: ModelFacts,
        compiled: Any,
        tokenizer: Any,
        n_threads: int,
        n_batch: int,
        ir_dir: Path,
        core: ov.Core,
        batch_rows: int = 0,
    ) -> None:
        self._core = core
        self.facts = facts
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.pool = _BlockPool(compiled, self.request)
        self.tokenizer = tokenizer
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.ir_dir = ir_dir
        self._vocab: list[bytes] | None = None
        self._pieces: dict[int, bytes] = {}
        self._eog = sorted({*facts.eos_token_ids, int(tokenizer.get_eos_token_id())} - {-1})
        exact = self._exact_decode_rows(MAX_DECODE_ROWS)
        #: rows per batched decode: the exact limit, unless the operator asked for more
        self.max_decode_rows = batch_rows or exact
        self.decode_batch_exact = self.max_decode_rows <= exact

    def _exact_decode_rows(self, up_to: int) -> int:
        """Up to how many sessions one inference may batch with every row's logits bit-identical
        to the same row computed alone (in f32 all 16 here; in bf16 rows differ in the last bits
        from 2 on, so batching stays off). A few dozen one-token inferences, once per load."""
        vocab = self.facts.vocab_size
        probes = [OpenVinoSession(self, BLOCK_SIZE) for _ in range(up_to)]
        try:
            for i, probe in enumerate(probes):  # distinct short histories
                probe.prefill([(1 + 13 * i + 7 * k) % vocab for k in range(6)])
            steps = [([(3 + 29 * i) % vocab], 6, probe.blocks) for i, probe in enumerate(probes)]
            solo = [self.forward([step])[0] for step in steps]
            exact = 1
            for rows in range(2, up_to + 1):
                batched = self.forward(steps[:rows])
                if not all(np.array_equal(batched[i], solo[i]) for i in range(rows)):
                    break
                exact = rows
            return exact
        finally:
            for probe in probes:
                probe.close()

    def forward(self, runs: Sequence[tuple[Sequence[int], int, Sequence[int]]]) -> np.ndarray:
        """One inference over several sequences, each ``(tokens, past, blocks)``: compute
        ``tokens`` after ``past`` resident ones in ``blocks``. Returns each run's last-row
        logits, one row per run."""
        counts = [len(tokens) for tokens, _, _ in runs]
        ends = np.cumsum(counts)
        self.request.infer(
            {
                "input_ids": np.concatenate([np.asarray(t, np.int64) for t, _, _ in runs]),
                "position_ids": np.concatenate(
                    [np.arange(past, past + len(t), dtype=np.int64) for t, past, _ in runs]
                ),
                "max_context_len": np.array(max(p + len(t) for t, p, _ in runs), np.int32),
                "past_lens": np.array([past for _, past, _ in runs], np.int32),
                "subsequence_begins": np.concatenate([[0], ends]).astype(np.int32),
                "block_indices_begins": np.concatenate(
                    [[0], np.cumsum([len(blocks) for _, _, blocks in runs])]
                ).astype(np.int32),
                "block_indices": np.concatenate(
                    [np.asarray(blocks, np.int32) for _, _, blocks in runs]
                ),
                "logits_indices": (ends - 1).astype(np.int64),
            }
        )
        logits = self.request.get_tensor("logits").data
        return np.array(logits, dtype=np.float32).reshape(len(runs), -1)

    def decode_batch(self, feeds: Sequence[tuple[Any, int]]) -> None:
        """One token for each session in one inference: each a subsequence of the paged batch."""
        runs: list[tuple[OpenVinoSession, int]] = list(feeds)
        for session, _ in runs:
            check_room(session.kv_len, 1, session.n_ctx)
            session.hold_blocks_for(session.kv_len + 1)
        try:
            rows = self.forward([([token], s.kv_len, s.blocks) for s, token in runs])
        except RuntimeError as exc:
            for session, _ in runs:
                session.undo_past(session.kv_len)
            raise SessionFatal(f"OpenVINO inference failed: {exc}") from None
        for (session, _), row in zip(runs, rows, strict=True):
            session.accept(row, session.kv_len + 1)

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
        self.request = None
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
        kv_copy_between_sessions=True,  # KV blocks copied within the pool
        native_state_snapshot=True,  # the session's KV blocks, saved and written back
        batched_decode=True,  # one inference, one paged subsequence per decoding session
        chat_template=True,
        grammar=False,
    )

    def __init__(
        self,
        n_threads: int,
        cache_dir: Path,
        precision: str = "",
        n_batch: int = 512,
        batch_rows: int = 0,
    ) -> None:
        self.n_threads = n_threads
        self.batch_rows = min(batch_rows, MAX_DECODE_ROWS)
        self.n_batch = n_batch
        self.cache_dir = cache_dir
        #: INFERENCE_PRECISION_HINT; empty: the device's default (bf16 where the CPU has it)
        self.precision = precision
        self._core = ov.Core()
        self.fingerprint: dict[str, object] = {
            "backend": "openvino",
            "engine": f"openvino {ov.get_version()}",
            "precision": precision or "default",
            "kv_layout": f"paged/{BLOCK_SIZE}",
        }

    def load(self, spec: ModelSpec) -> OpenVinoModel:
        path = spec.facts.path
        ir = path if path.is_dir() else ir_from_gguf(path, self.cache_dir / spec.facts.digest)
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": self.n_threads,
            "PERFORMANCE_HINT": "LATENCY",
            "KV_CACHE_PRECISION": "f16",
        }
        if self.precision:
            config["INFERENCE_PRECISION_HINT"] = self.precision
        try:
            model = self._core.read_model(str(ir / IR_MODEL))
            _paged_model(model, spec.facts)
            compiled = self._core.compile_model(model, "CPU", config)
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
            ir_dir=ir,
            core=self._core,
            batch_rows=self.batch_rows,
        )
