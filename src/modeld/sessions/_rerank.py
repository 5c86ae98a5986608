"""The Rerank verb: one relevance score per document for a query, by one of two methods.

- **cross_encoder** (a model whose tasks hold "rerank" and not "generate": a GGUF declaring
  rank pooling): each (query, document) pair is one input of the model's embedding side, formed
  as llama-server ``--rerank`` forms it, and its score is the model's own output. Pairs are
  packed into as few engine calls as fit, each call one turn on the engine thread (as Embed).
- **generative_yes_no** (a generative model): each document is judged under the prompt below in
  the model's chat template, and its score is P(yes) normalised over {yes, no} at the answer
  position, ``sigmoid(l_yes - l_no)`` from the raw logits (before any sampler step). One engine
  session per request: the rendered prompts' common token prefix (the system turn, the
  instruction and the query) is prefilled once, then each document's remainder is prefilled
  after it (the session truncated back to the prefix between documents), one document per
  turn on the engine thread, so decoding sessions keep their turns while a long list runs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from modeld.backends._base import (
    EmbeddingEngine,
    EngineModel,
    RankingEngine,
    SamplingParams,
    check_text,
)
from modeld.chat import ChatInput, Message
from modeld.models._facts import ModelSpec
from modeld.sessions._embeddings import Embeddings, _plan
from modeld.sessions._inputs import chat_tokens
from modeldconn._errors import (
    CapabilityMismatch,
    ContextOverflow,
    InvalidArgument,
    UnsupportedFeature,
)
from modeldconn._types import RerankUsage

__all__ = [
    "INSTRUCTION",
    "MAX_DOCUMENTS",
    "METHOD_CROSS_ENCODER",
    "METHOD_YES_NO",
    "SYSTEM_PROMPT",
    "RerankRequest",
    "RerankResult",
    "Reranker",
    "order_of",
    "yes_no_messages",
]

#: documents one Rerank call may carry
MAX_DOCUMENTS = 1024
METHOD_CROSS_ENCODER = "cross_encoder"
METHOD_YES_NO = "generative_yes_no"
#: the generative method's prompt (Qwen3-Reranker's, with its default instruction)
SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def yes_no_messages(query: str, document: str) -> tuple[Message, ...]:
    """The generative method's conversation for one document (the assistant turn is opened by
    the template's generation prompt)."""
    user = f"<Instruct>: {INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"
    return (Message("system", SYSTEM_PROMPT), Message("user", user))


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: tuple[str, ...]
    top_n: int = 0  #: 0: order holds every document
    truncate: bool = False


@dataclass(frozen=True)
class RerankResult:
    scores: np.ndarray  #: float32, shape (len(documents),), input order
    order: tuple[int, ...]  #: best first; the top_n best when asked
    method: str
    usage: RerankUsage
    engine_calls: int


def order_of(scores: Sequence[float], top_n: int = 0) -> tuple[int, ...]:
    """Indices by score, best first, ties by index; the ``top_n`` best (0: all)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return tuple(ranked[:top_n] if top_n else ranked)


def _check(request: RerankRequest) -> None:
    """:raises InvalidArgument: an empty query (field ``query``), no documents, too many
    (``documents``), an empty one (``documents[i]``), or a lone surrogate in any text."""
    if not request.query:
        raise InvalidArgument("query is empty", field="query")
    check_text(request.query, "query")
    if not request.documents:
        raise InvalidArgument("documents is empty: send at least one", field="documents")
    if len(request.documents) > MAX_DOCUMENTS:
        raise InvalidArgument(
            f"{len(request.documents)} documents; at most {MAX_DOCUMENTS} per call",
            field="documents",
            documents=len(request.documents),
            limit=MAX_DOCUMENTS,
        )
    for i, document in enumerate(request.documents):
        if not document:
            raise InvalidArgument(f"documents[{i}] is empty", field=f"documents[{i}]", input=i)
        check_text(document, f"documents[{i}]")


def _overflow(i: int, tokens: int, limit: int) -> ContextOverflow:
    return ContextOverflow(
        f"documents[{i}] makes an input of {tokens} tokens; the model takes at most {limit} "
        "(send truncate: true to cut the document)",
        stage="rerank",
        field=f"documents[{i}]",
        input=i,
        tokens=tokens,
        resident=0,
        additional=tokens,
        n_ctx=limit,
    )


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class Reranker:
    """Rerank over the daemon's embedding sides (cross-encoders) and model pool (generative
    models), both scheduled on the engine thread like every other engine call."""

    def __init__(self, embeddings: Embeddings) -> None:
        self._embeddings = embeddings
        self._scheduler = embeddings.scheduler
        self._pool = embeddings.pool

    async def rerank(self, spec: ModelSpec, request: RerankRequest) -> RerankResult:
        """One score per document, and their order.

        :raises InvalidArgument: see ``_check``.
        :raises CapabilityMismatch: the model neither reranks nor generates (an embedding-only
            model; metadata ``task`` "rerank", ``tasks``).
        :raises UnsupportedFeature: this backend cannot run this cross-encoder, or the model's
            vocabulary has no single-token "yes"/"no", or no chat template.
        :raises ContextOverflow: a (query, document) input is longer than the model takes and
            ``truncate`` is off (metadata ``input``: the document's index, ``tokens``,
            ``n_ctx``); the query alone too long is ``ContextOverflow`` with field ``query``.
        :raises InsufficientMemory: the generative method's session does not fit.
        :raises ModelLoadFailed: the engine could not load the model.
        """
        facts = spec.facts
        _check(request)
        if "generate" in facts.tasks:
            return await self._yes_no(spec, request)
        if "rerank" in facts.tasks:
            return await self._cross(spec, request)
        raise CapabilityMismatch(
            f"{facts.name} cannot rerank (tasks: {', '.join(facts.tasks)}): it is neither a "
            "cross-encoder nor a generative model",
            model=facts.name,
            task="rerank",
            tasks=",".join(facts.tasks),
        )

    # -- cross-encoder ----------------------------------------------------------------------

    async def _cross(self, spec: ModelSpec, request: RerankRequest) -> RerankResult:
        try:
            async with self._embeddings.side(spec) as engine:
                if not isinstance(engine, RankingEngine):
                    raise UnsupportedFeature("this embedding side does not rank")
                self._embeddings.admit(spec, engine, "rank")  # its context counts in the budget
                steps = _cross_steps(engine, engine, request)
                result: tuple[np.ndarray, RerankUsage, int] | None = None
                async for item in self._scheduler.stream(steps):
                    result = item
        except UnsupportedFeature:
            raise UnsupportedFeature(
                f"{spec.facts.name} is a cross-encoder, which this backend does not run "
                "(llama runs GGUF rerankers; openvino has no text-classification IR path)",
                model=spec.facts.name,
                feature="cross_encoder",
            ) from None
        assert result is not None
        scores, usage, calls = result
        order = order_of(scores.tolist(), request.top_n)
        return RerankResult(scores, order, METHOD_CROSS_ENCODER, usage, calls)

    # -- generative yes/no ------------------------------------------------------------------

    async def _yes_no(self, spec: ModelSpec, request: RerankRequest) -> RerankResult:
        loaded = await self._pool.load(spec)
        async with self._pool.borrowed(loaded) as model:
            prompts, cut, yes, no, anchor = await asyncio.to_thread(_yes_no_prompts, model, request)
            longest = max(len(p) for p in prompts)
            n_ctx, _ = self._pool.admit(spec, longest)
            steps = _yes_no_steps(model, prompts, anchor, n_ctx, yes, no)
            result: tuple[np.ndarray, int, int] | None = None
            async for item in self._scheduler.stream(steps):
                result = item
        assert result is not None
        scores, computed, calls = result
        usage = RerankUsage(tuple(len(p) for p in prompts), computed, tuple(cut))
        order = order_of(scores.tolist(), request.top_n)
        return RerankResult(scores, order, METHOD_YES_NO, usage, calls)


def _cross_steps(
    embedder: EmbeddingEngine, side: RankingEngine, request: RerankRequest
) -> Generator[tuple[np.ndarray, RerankUsage, int] | None, None, None]:
    """Engine thread (``embedder`` and ``side`` are one engine): tokenize the pairs (one turn),
    then one engine call per turn."""
    limit = embedder.max_tokens
    inputs: list[list[int]] = []
    cut: list[int] = []
    for i, document in enumerate(request.documents):
        head, body, tail = side.rank_parts(request.query, document)
        total = len(head) + len(body) + len(tail)
        over = total - limit
        if over > 0 and len(head) + len(tail) >= limit:
            raise ContextOverflow(
                f"the query makes {len(head) + len(tail)} tokens with the pair's markup; "
                f"the model takes at most {limit} for query and document together",
                stage="rerank",
                field="query",
                tokens=len(head) + len(tail),
                resident=0,
                additional=len(head) + len(tail),
                n_ctx=limit,
            )
        if over > 0 and not request.truncate:
            raise _overflow(i, total, limit)
        ids = head + (body[: len(body) - over] if over > 0 else body) + tail
        inputs.append(ids)
        cut.append(total - len(ids))
    lengths = [len(ids) for ids in inputs]
    steps = _plan(embedder, lengths)
    yield None  # tokenizing was this turn
    scores = np.empty(len(inputs), dtype=np.float32)
    for number, rows in enumerate(steps):
        scores[rows.start : rows.stop] = side.rank_step([inputs[i] for i in rows])
        if number + 1 < len(steps):
            yield None
    yield scores, RerankUsage(tuple(lengths), sum(lengths), tuple(cut)), len(steps)


def _single_token(model: EngineModel, text: str) -> int:
    ids = model.tokenize(text, add_special=False, parse_special=False)
    if len(ids) != 1:
        raise UnsupportedFeature(
            f"{model.facts.name}'s vocabulary writes {text!r} as {len(ids)} tokens; the yes/no "
            "method needs one",
            model=model.facts.name,
            feature="generative_yes_no",
        )
    return ids[0]


def _render(model: EngineModel, query: str, document: str) -> list[int]:
    chat = ChatInput(yes_no_messages(query, document), add_generation_prompt=True)
    return chat_tokens(model, chat, start=True)[0]


def _query_prefix(model: EngineModel, query: str) -> int:
    """Tokens of the prompt before any document: the common prefix of two renderings that
    differ in the document only. Prefilling exactly these first makes a document's score not
    depend on which other documents share the request (llama.cpp's results depend on how a
    prompt is split into engine calls)."""
    a, b = _render(model, query, "A"), _render(model, query, "B")
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _yes_no_prompts(
    model: EngineModel, request: RerankRequest
) -> tuple[list[list[int]], list[int], int, int, int]:
    """Off the engine thread (the model borrowed): every document's prompt ids, the tokens cut
    from each document, the ids of "yes" and "no", and the query's prefix length
    (:func:`_query_prefix`).

    A document too long for the model's context is cut (``truncate``) to the tokens that fit,
    as text (its first tokens detokenized), and rendered again.
    """
    limit = model.facts.context_length or 2**31
    yes, no = _single_token(model, "yes"), _single_token(model, "no")
    prompts: list[list[int]] = []
    cut: list[int] = []
    for i, document in enumerate(request.documents):
        ids = _render(model, request.query, document)
        lost = 0
        if len(ids) > limit:
            if not request.truncate:
                raise _overflow(i, len(ids), limit)
            body = model.tokenize(document, add_special=False, parse_special=False)
            keep = len(body) - (len(ids) - limit)
            while len(ids) > limit and keep > 0:
                text = model.detokenize(body[:keep])
                ids = _render(model, request.query, text)
                keep -= max(len(ids) - limit, 1)
            if len(ids) > limit:
                raise ContextOverflow(
                    f"the query alone makes a prompt over the model's {limit} tokens",
                    stage="rerank",
                    field="query",
                    tokens=len(ids),
                    resident=0,
                    additional=len(ids),
                    n_ctx=limit,
                )
            lost = len(body) - len(model.tokenize(text, add_special=False, parse_special=False))
        prompts.append(ids)
        cut.append(max(lost, 0))
    return prompts, cut, yes, no, _query_prefix(model, request.query)


def _shared_prefix(prompts: Sequence[Sequence[int]], anchor: int) -> int:
    """Leading tokens every prompt shares, at most ``anchor`` (the query's prefix), leaving
    each at least one token of its own (the one whose logits are read)."""
    first = prompts[0]
    shared = min(min(len(p) for p in prompts) - 1, anchor)
    for p in prompts[1:]:
        n = 0
        while n < shared and p[n] == first[n]:
            n += 1
        shared = n
    return max(shared, 0)


def _yes_no_steps(
    model: EngineModel,
    prompts: Sequence[Sequence[int]],
    anchor: int,
    n_ctx: int,
    yes: int,
    no: int,
) -> Generator[tuple[np.ndarray, int, int] | None, None, None]:
    """Engine thread: one session; the shared prefix once, then each document after it, at
    most ``n_batch`` tokens per turn. The last item is (scores, tokens computed, engine calls).
    """
    shared = _shared_prefix(prompts, anchor)
    size = max(model.n_batch, 1)
    session = model.open_session(n_ctx)
    sampler = None
    calls = 0
    try:
        prefix = prompts[0][:shared]
        for start in range(0, shared, size):
            session.prefill(prefix[start : start + size])
            calls += 1
            yield None
        sampler = session.sampler(SamplingParams(), ())
        scores = np.empty(len(prompts), dtype=np.float32)
        for i, ids in enumerate(prompts):
            session.truncate(shared)
            rest = ids[shared:]
            for start in range(0, len(rest), size):
                session.prefill(rest[start : start + size])
                calls += 1
                if start + size < len(rest):
                    yield None
            logits = sampler.logits()
            scores[i] = _sigmoid(float(logits[yes]) - float(logits[no]))
            if i + 1 < len(prompts):
                yield None
        computed = shared + sum(len(p) - shared for p in prompts)
        yield scores, computed, calls
    finally:
        if sampler is not None:
            sampler.close()
        session.close()
