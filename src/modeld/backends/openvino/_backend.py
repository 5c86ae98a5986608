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

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llguidance
import numpy as np
import openvino as ov
import openvino_genai as ov_genai

from modeld.backends import _exactness
from modeld.backends._base import (
    Capabilities,
    check_generates,
    check_room,
    check_text,
    without_double_bos,
)
from modeld.backends._once import Once
from modeld.backends.openvino._block_pool import BLOCK_SIZE, BlockPool
from modeld.backends.openvino._embed import OpenVinoEmbedder
from modeld.backends.openvino._grammar_vocab import grammar_tokenizer
from modeld.backends.openvino._ir import IR_MODEL, ir_from_gguf, paged_model
from modeld.backends.openvino._session import OpenVinoSession
from modeld.backends.openvino._vocab import detokenizer_vocab, raw_piece
from modeld.models._devices import openvino_device
from modeld.models._facts import ModelFacts, ModelSpec
from modeldconn._errors import InvalidArgument, ModelLoadFailed, SessionFatal, UnsupportedFeature

__all__ = ["BLOCK_SIZE", "OpenVinoBackend", "ir_from_gguf"]

#: sessions' decode steps one inference computes at most
MAX_DECODE_ROWS = 16
log = logging.getLogger("modeld.openvino")


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
        self.pool = BlockPool(compiled, self.request)
        self.tokenizer = tokenizer
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.ir_dir = ir_dir
        self._vocab: list[bytes] | None = None
        self._grammar_tokenizer = Once(lambda: grammar_tokenizer(self))
        self._pieces: dict[int, bytes] = {}
        self._control: dict[int, bool] = {}
        self._eog = sorted({*facts.eos_token_ids, int(tokenizer.get_eos_token_id())} - {-1})
        exact = self._exact_decode_rows(MAX_DECODE_ROWS)
        #: rows per batched decode: the exact limit, unless the operator asked for more
        self.max_decode_rows = batch_rows or exact
        self.decode_batch_exact = self.max_decode_rows <= exact

    def _exact_decode_rows(self, up_to: int) -> int:
        """Up to how many sessions one inference may batch with every row's logits bit-identical
        to the same row computed alone (in f32 all 16 here; in bf16 rows differ in the last bits
        from 2 on, so batching stays off). A few dozen one-token inferences, once per load (the
        measurement itself: ``modeld.backends._exactness``)."""
        vocab = self.facts.vocab_size
        probes = [OpenVinoSession(self, BLOCK_SIZE) for _ in range(up_to)]
        try:
            for i, probe in enumerate(probes):  # distinct short histories
                probe.prefill([(1 + 13 * i + 7 * k) % vocab for k in range(6)])
            steps = [([(3 + 29 * i) % vocab], 6, probe.blocks) for i, probe in enumerate(probes)]
            return _exactness.exact_decode_rows(
                up_to,
                alone=lambda row: self.forward([steps[row]])[0],
                together=lambda rows: list(self.forward(steps[:rows])),
                # each inference is told every row's length: a probe step is never resident
                undo=lambda rows: None,
            )
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

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        """See ``EngineModel.tokenize``."""
        check_text(text, "text")  # pybind11 cannot pass a lone surrogate to C++ at all
        bos = self.facts.bos_token_id
        if not parse_special:
            ids = self._plain(text)
            return [bos, *ids] if add_special and self.facts.add_bos and bos >= 0 else ids
        return without_double_bos(
            self._encode(text, add_special),
            bos,
            add_special,
            lambda: self._encode(text, False)[:1] == [bos],
        )

    def _encode(self, text: str, add_special: bool) -> list[int]:
        encoded = self.tokenizer.encode(text, add_special_tokens=add_special)
        return [int(t) for t in encoded.input_ids.data[0]]

    def _plain(self, text: str) -> list[int]:
        """``text`` as plain text: no control token comes out of it.

        openvino-tokenizers' IR always matches special-token text (in its split step and again
        inside its BPE step), so the text is cut right after the first character of every
        control token's text it holds and the pieces are tokenized apart: no piece holds a
        whole control text. Text without control text (nearly all) is one piece, so its ids
        are the tokenizer's own; at a cut, merges across the cut cannot happen, so ids there
        can differ from llama.cpp's plain tokenization, never into a control token.
        """
        pieces: list[tuple[str, list[int]]] = [(text, self._encode(text, False))]
        while any(self.is_control(t) for _, ids in pieces for t in ids):
            cut: list[tuple[str, list[int]]] = []
            for piece, ids in pieces:
                controls = {t for t in ids if self.is_control(t)}
                if not controls:
                    cut.append((piece, ids))
                    continue
                marks = [self.detokenize([t]) for t in controls]
                at = sorted(
                    {i + 1 for mark in marks if mark for i in _occurrences(piece, mark)}
                    - {len(piece)}
                )
                if not at:  # a control token without its own text in the piece: one per char
                    if len(piece) == 1:
                        raise InvalidArgument(f"{piece!r} is a control token of this model")
                    at = list(range(1, len(piece)))
                bounds = [0, *at, len(piece)]
                cut.extend(
                    (part, self._encode(part, False))
                    for part in (piece[a:b] for a, b in itertools.pairwise(bounds))
                )
            pieces = cut
        return [t for _, ids in pieces for t in ids]

    def is_control(self, token: int) -> bool:
        """A token with text that the detokenizer skips as special: BOS, EOS, turn markers."""
        known = self._control.get(token)
        if known is None:
            skipped = str(self.tokenizer.decode([token], skip_special_tokens=True)) == ""
            known = self._control[token] = skipped and self.detokenize([token]) != ""
        return known

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
            self._vocab = detokenizer_vocab(self.ir_dir)
        return raw_piece(self._vocab[token]) if token < len(self._vocab) else b""

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._eog

    def end_of_generation_ids(self) -> list[int]:
        return self._eog

    def grammar_tokenizer(self) -> llguidance.LLTokenizer:
        return self._grammar_tokenizer.get()

    def open_session(self, n_ctx: int, kv_cache_type: str = "f16") -> OpenVinoSession:
        # f16 only (OpenVinoBackend.kv_cache_types): the caller checked it
        return OpenVinoSession(self, n_ctx)

    def pooled_bytes(self) -> int:
        return 0  # a session's KV is its own infer request's: nothing is pooled

    def drop_pooled(self, keep: tuple[int, str] | None = None) -> int:
        return 0

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _occurrences(text: str, mark: str) -> list[int]:
    """Every index where ``mark`` starts in ``text``, overlapping ones included."""
    found, at = [], text.find(mark)
    while at >= 0:
        found.append(at)
        at = text.find(mark, at + 1)
    return found


class OpenVinoBackend:
    name = "openvino"
    capabilities = Capabilities(
        token_level_truncation=True,  # the state variables are sliced at any token
        kv_copy_between_sessions=True,  # KV blocks copied within the pool
        native_state_snapshot=True,  # the session's KV blocks, saved and written back
        batched_decode=True,  # one inference, one paged subsequence per decoding session
        chat_template=True,
        # the grammar mask, logit bias and logprobs work on the logits row every backend
        # samples from (modeld.structured, sessions._logprobs); tools and thinking are
        # rendering and parsing above the engine
        grammar=True,
        tools=True,
        thinking=True,
        logprobs=True,
        logit_bias=True,
    )

    def __init__(
        self,
        n_threads: int,
        cache_dir: Path,
        precision: str = "",
        n_batch: int = 512,
        batch_rows: int = 0,
        device: str = "CPU",
    ) -> None:
        #: `modeld serve --device` (an alias's ``device`` overrides it per model); a device
        #: OpenVINO does not see falls back to the CPU (models._devices.openvino_device)
        self.device = device
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

    #: the paged KV blocks are f16 (KV_CACHE_PRECISION): OpenVINO's u8 cache is its own
    #: per-channel scheme, not ggml's q8_0 / q4_0, so they are not offered under those names
    kv_cache_types: tuple[str, ...] = ("f16",)

    def check_kv_cache_type(self, facts: ModelFacts, kv_cache_type: str) -> None:
        """:raises UnsupportedFeature: any type but f16."""
        if kv_cache_type != "f16":
            raise UnsupportedFeature(
                f"the openvino backend caches KV as f16 only, not {kv_cache_type} "
                "(q8_0 and q4_0 are llama.cpp cache types: serve the GGUF with --backend llama)",
                feature="kv_cache_type",
                kv_cache_type=kv_cache_type,
                model=facts.name,
            )

    def load(self, spec: ModelSpec) -> OpenVinoModel:
        check_generates(spec.facts)  # a feature-extraction IR has no logits to decode
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
            paged_model(model, spec.facts)
            requested = spec.alias.device if spec.alias and spec.alias.device else self.device
            device = openvino_device(requested, self._core.available_devices)
            if device.fallback_reason:
                log.warning("%s: %s", spec.facts.name, device.fallback_reason)
            compiled = self._core.compile_model(model, device.device, config)
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

    def embedder(self, spec: ModelSpec, shared: object | None) -> OpenVinoEmbedder:
        """A feature-extraction IR's embedder (it loads its own weights).

        :raises UnsupportedFeature: a generative model: modeld drives its IR for logits only,
            with no hidden states to pool.
        :raises ModelLoadFailed: OpenVINO could not load the IR.
        """
        if "embed" not in spec.facts.tasks or not spec.facts.path.is_dir():
            raise UnsupportedFeature(
                "the openvino backend embeds with feature-extraction IRs only; this model's IR "
                "returns logits, not hidden states to pool"
            )
        return OpenVinoEmbedder(spec.facts, self._core, self.n_threads, self.precision)
