"""Embeddings on llama.cpp: contexts with ``embeddings`` on, apart from the generation lanes.

One context per pooling asked for, made on the first step that needs it and freed by
``release`` (the daemon calls it once the model idles). A step is one input in one
llama_decode, read back as its pooled vector (``llama_get_embeddings_seq``). An encoder (BERT)
keeps no KV; a decoder's KV is cleared before every step, so a step never sees another's
tokens.

**One input per call, by design** (``MAX_INPUTS``). Packing several inputs into one call, each
its own sequence, is how llama-server batches, and it buys nothing here while making an
input's vector depend on its neighbours:

- *cost*: llama.cpp's attention spans every token of the call, the other sequences' masked
  out but still computed (KQ, softmax, KQV over all of them), so a call's cost grows with the
  square of its tokens. Measured on all-MiniLM-L6-v2, 17-token texts, 2 threads, CPU time per
  input: 13.1 ms packed 30 to a 512-token call (the old layout), 5.0 ms 4 to a call, 5.8 ms
  one to a call; 3.6-3.7 ms either way for the 24 reference sentences (6-17 tokens).
- *exactness*: ggml's CPU softmax (``ggml_vec_soft_max_f32``) takes a row one vector width
  at a time (16 columns with AVX-512) with a vector ``exp`` and a lane-wise sum, and the last,
  partial width with the scalar ``expf``; an input's columns land on other lanes, or under
  the other ``exp``, wherever its neighbours put them, which moves its vector by up to 3e-5.
  One input per call computes it the same way alone or in any batch, bit for bit.

A cross-encoder (a GGUF that declares rank pooling) scores (query, document) pairs the same way:
one context with rank pooling, one pair per call, each pair's score the first value of its
pooled output (llama.cpp applies the model's classification head to the pair), formed exactly
as llama-server ``--rerank`` forms it (:meth:`LlamaEmbedder.rank_parts`); a document scores the
same alone as in any list.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp as ll
import numpy as np

from modeld.backends._base import check_text
from modeld.models._facts import ModelFacts
from modeldconn._errors import SessionFatal

__all__ = ["LlamaEmbedder"]

_POOLING = {
    "mean": ll.LLAMA_POOLING_TYPE_MEAN,
    "cls": ll.LLAMA_POOLING_TYPE_CLS,
    "last": ll.LLAMA_POOLING_TYPE_LAST,
    "rank": ll.LLAMA_POOLING_TYPE_RANK,
}
#: inputs one step computes: one, alone in its llama_decode (the module's docstring says why)
MAX_INPUTS = 1
#: tokens one step computes at most; a non-causal model needs a step in one micro-batch. A
#: step is one engine turn: a decoding session waits for at most one step per embedding
#: client, so steps stay short (one input: ~5 ms for 17 MiniLM tokens, ~0.1 s for 512)
STEP_TOKENS = 512
#: a decoder's embedding context holds this many tokens at most (its logits are computed too)
DECODER_STEP_TOKENS = 512


class LlamaEmbedder:
    """:param owns: free ``model`` on close (an embedding-only model); False when the weights
    are a generative model's, owned by its ``LlamaModel``."""

    def __init__(self, facts: ModelFacts, model: Any, n_threads: int, *, owns: bool) -> None:
        self.facts = facts
        self.model = model
        self.owns = owns
        self.n_threads = n_threads
        self.vocab = ll.llama_model_get_vocab(model)
        self.dims = int(ll.llama_model_n_embd(model))
        self.causal = "generate" in facts.tasks
        self.encoder_only = bool(ll.llama_model_has_encoder(model)) and not bool(
            ll.llama_model_has_decoder(model)
        )
        trained = int(ll.llama_model_n_ctx_train(model)) or facts.context_length
        self.step_tokens = DECODER_STEP_TOKENS if self.causal else STEP_TOKENS
        self.max_tokens = min(trained, self.step_tokens)
        self.max_inputs = MAX_INPUTS
        self._contexts: dict[str, Any] = {}
        self._batch: Any = None

    @property
    def contexts(self) -> int:
        return len(self._contexts)

    def _one_context_bytes(self) -> int:
        """One context at its largest (a ``step_tokens`` input), an upper bound: an output
        buffer of a logits row and an embedding per token (llama.cpp reserves both whatever the
        pooling), a decoder's logits once more in the compute buffer, attention scores and
        their softmax over every token pair of each head, and 18 activation widths per token.
        Measured after a 512-token input: all-MiniLM-L6-v2 82 MB (this says 105), Gemma 3 270M
        1,082 MB (1,109: its 262k-token vocabulary's logits), the tiny BERT reranker 5.0 MB
        (7.8)."""
        tokens = self.step_tokens
        vocab = self.facts.vocab_size
        heads = max(1, self.facts.attention_heads)
        output = tokens * (vocab + self.dims) * 4
        logits = tokens * vocab * 4 if self.causal else 0
        attention = 2 * tokens * tokens * heads * 4
        return (2 << 20) + output + logits + attention + tokens * self.dims * 4 * 18

    def held_bytes(self) -> int:
        """See ``EmbeddingEngine.held_bytes``."""
        return len(self._contexts) * self._one_context_bytes()

    def context_bytes(self, pooling: str) -> int:
        """See ``EmbeddingEngine.context_bytes``."""
        return 0 if pooling in self._contexts else self._one_context_bytes()

    def step_cost(self, lengths: Sequence[int]) -> int:
        return sum(lengths)

    def _tokenize(self, raw: bytes, add_special: bool, parse_special: bool = False) -> list[int]:
        capacity = len(raw) + 8
        while True:
            buffer = (ll.llama_token * capacity)()
            count = ll.llama_tokenize(
                self.vocab, raw, len(raw), buffer, capacity, add_special, parse_special
            )
            if count >= 0:
                return list(buffer[:count])
            capacity = -count

    def tokenize_parts(self, text: str) -> tuple[list[int], list[int], list[int]]:
        """See ``EmbeddingEngine.tokenize_parts``: plain text (no control-token parsing)."""
        check_text(text, "text")
        raw = text.encode("utf-8")
        body = self._tokenize(raw, False)
        whole = self._tokenize(raw, True)
        for start in range(len(whole) - len(body) + 1):
            if whole[start : start + len(body)] == body:
                return whole[:start], body, whole[start + len(body) :]
        return [], whole, []  # the specials changed the text's own tokens: keep them whole

    def rank_parts(self, query: str, document: str) -> tuple[list[int], list[int], list[int]]:
        """The pair as llama-server's ``format_prompt_rerank`` forms it, split around the
        document's own tokens as ``(head, body, tail)`` (truncation cuts ``body`` only).

        With the model's ``rerank`` chat template: the template with ``{query}`` and
        ``{document}`` replaced (markup parsed for control tokens; query and document are plain
        text, each part tokenized on its own). Without one: ``[BOS] query [EOS] [SEP] document
        [EOS]``, each special only where the vocabulary adds it (``add_bos``, ``add_eos``,
        ``add_sep``) and SEP standing in for a missing EOS.

        :raises InvalidArgument: a lone surrogate in ``query`` or ``document``.
        """
        check_text(query, "query")
        check_text(document, "document")
        template = ll.llama_model_chat_template(self.model, b"rerank")
        if template:
            text = template.decode("utf-8", "replace")
            before, _, after = text.partition("{document}")

            def markup(part: str) -> list[int]:
                ids: list[int] = []
                for i, piece in enumerate(part.split("{query}")):
                    if i:
                        ids += self._tokenize(query.encode("utf-8"), False)
                    ids += self._tokenize(piece.encode("utf-8"), False, parse_special=True)
                return ids

            return markup(before), self._tokenize(document.encode("utf-8"), False), markup(after)
        vocab = self.vocab
        eos = ll.llama_vocab_eos(vocab)
        if eos == ll.LLAMA_TOKEN_NULL:
            eos = ll.llama_vocab_sep(vocab)
        head: list[int] = []
        if ll.llama_vocab_get_add_bos(vocab):
            head.append(ll.llama_vocab_bos(vocab))
        head += self._tokenize(query.encode("utf-8"), False)
        if ll.llama_vocab_get_add_eos(vocab):
            head.append(eos)
        if ll.llama_vocab_get_add_sep(vocab):
            head.append(ll.llama_vocab_sep(vocab))
        tail = [eos] if ll.llama_vocab_get_add_eos(vocab) else []
        return head, self._tokenize(document.encode("utf-8"), False), tail

    def rank_step(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """One llama call over the pairs (``max_inputs``: one): float32, shape
        ``(len(inputs),)``, each the model's score for that pair (the first value of its rank
        pooling, as llama-server reports it).

        :raises SessionFatal: llama.cpp failed or returned no score.
        """
        return self.embed_step(inputs, "rank", width=1)[:, 0]

    def _context(self, pooling: str) -> Any:
        ctx = self._contexts.get(pooling)
        if ctx is None:
            params = ll.llama_context_default_params()
            params.n_ctx = self.step_tokens
            params.n_batch = params.n_ubatch = self.step_tokens
            params.n_seq_max = self.max_inputs
            params.embeddings = True
            params.pooling_type = _POOLING[pooling]
            params.n_threads = params.n_threads_batch = self.n_threads
            # flash attention accumulates in f16: vectors 1e-4 from the plain path's float32
            params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
            ctx = ll.llama_init_from_model(self.model, params)
            if not ctx:
                raise SessionFatal("llama.cpp could not create an embedding context")
            self._contexts[pooling] = ctx
        return ctx

    def embed_step(
        self, inputs: Sequence[Sequence[int]], pooling: str, width: int = 0
    ) -> np.ndarray:
        """See ``EmbeddingEngine.embed_step``: one llama_decode, sequence ``i`` = input ``i``
        (``max_inputs``: one); ``width``: floats read per sequence (0: ``dims``)."""
        ctx = self._context(pooling)
        total = sum(len(ids) for ids in inputs)
        assert 0 < len(inputs) <= self.max_inputs and total <= self.step_tokens
        if self._batch is None:
            self._batch = ll.llama_batch_init(self.step_tokens, 0, 1)
        batch = self._batch
        k = 0
        for seq, ids in enumerate(inputs):
            for pos, token in enumerate(ids):
                batch.token[k] = token
                batch.pos[k] = pos
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = seq
                batch.logits[k] = 1
                k += 1
        batch.n_tokens = total
        memory = ll.llama_get_memory(ctx)
        if memory:
            ll.llama_memory_clear(memory, True)
        run = ll.llama_encode if self.encoder_only else ll.llama_decode
        status = run(ctx, batch)
        if status != 0:
            raise SessionFatal(f"llama.cpp embedding step failed with status {status}")
        width = width or self.dims
        out = np.empty((len(inputs), width), dtype=np.float32)
        for seq in range(len(inputs)):
            pointer = ll.llama_get_embeddings_seq(ctx, seq)
            if not pointer:
                raise SessionFatal(f"llama.cpp returned no pooled embedding for input {seq}")
            out[seq] = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(width,)
            )
        if memory:
            ll.llama_memory_clear(memory, True)
        return out

    def release(self) -> None:
        for ctx in self._contexts.values():
            ll.llama_free(ctx)
        self._contexts.clear()
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None

    def close(self) -> None:
        self.release()
        if self.owns and self.model:
            ll.llama_model_free(self.model)
        self.model = None
