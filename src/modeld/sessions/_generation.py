"""Decode on the engine thread: one token a step, stop conditions, and batched computation of
the sampled tokens of every session decoding on the same model (see ``engine._batching``).

A Decode samples a token, streams it, and computes it lazily at the start of its next step, or
another decoding session's step computes it in the same engine call as its own. Rows decoded in
a batch are bit-identical to rows decoded alone (``max_decode_rows`` is measured so), so
batching never changes a session's tokens; decoded rows never count as exact prefill chunks
(``Session.aligned``): with ``exact_prefix`` the next turn recomputes them as aligned chunks.
The generator yields a :class:`DecodeStep` per token (None between prefill chunks) and a final
step with the usage; closing it mid-way (a cancelled client) keeps the tape valid.
"""

from __future__ import annotations

import time
from collections.abc import Generator

import numpy as np

from modeld._metrics import Metrics
from modeld.backends._base import EngineModel
from modeld.chat._thinking import prompt_opens_thinking
from modeld.engine._batching import feeds_for
from modeld.sessions._inputs import check_ids
from modeld.sessions._logprobs import token_logprob
from modeld.sessions._models import ModelPool
from modeld.sessions._output import DecodeOutput
from modeld.sessions._prefill import Prefill
from modeld.sessions._residency import Residency
from modeld.sessions._session import Session, SessionState
from modeld.sessions._stats import EngineCounters
from modeld.sessions._stop_strings import StopScanner
from modeld.sessions._table import SessionTable
from modeld.sessions._types import DecodeOptions, DecodeStep
from modeld.structured import DecodeConstraints, TokenConstraint
from modeld.structured._plan import NONE as NO_CONSTRAINTS
from modeldconn._types import DecodeFinal

__all__ = ["Generation"]

#: tokens of the tape's end read back to see whether the prompt left a thinking section open
_THINK_LOOKBACK = 16


def _tape_end(tape: list[int]) -> tuple[int, tuple[int, ...]]:
    """Where a tape ends: its length and last tokens (a UTF-8 character spans at most four)."""
    return len(tape), tuple(tape[-4:])


class Generation:
    def __init__(
        self,
        table: SessionTable,
        pool: ModelPool,
        residency: Residency,
        prefill: Prefill,
        counters: EngineCounters,
        metrics: Metrics,
    ) -> None:
        self._table = table
        self._pool = pool
        self._residency = residency
        self._prefill = prefill
        self._counters = counters
        self._metrics = metrics

    def steps(
        self,
        session: Session,
        request: DecodeOptions,
        suffix: list[int] | None,
        held: int | None = None,
        constraints: DecodeConstraints = NO_CONSTRAINTS,
    ) -> Generator[DecodeStep | None, None, None]:
        """Engine thread, one token per step. ``held``: the tape length the client holds,
        applied first of all (see ``Prefill.hold``); ``constraints``: the Decode's compiled
        grammars (``modeld.structured``), prepared before it.

        :raises NoRoom: the session is parked and every live session is busy (before any
            work: the caller waits for room and starts again).
        :raises InvalidArgument: a stop token or logit_bias id outside the vocabulary (before
            any work).
        """
        received = time.perf_counter()
        engine = self._residency.live(session)
        self._prefill.hold(session, held)
        model = self._pool.engine_of(session.model)
        vocab = model.facts.vocab_size
        check_ids(list(request.stop_token_ids), vocab, "stop_token_ids")
        check_ids([t for t, _ in request.sampling.logit_bias], vocab, "logit_bias")
        if suffix is not None:
            for item in self._prefill.prefill_suffix(session, suffix):
                if item is None:
                    yield None  # between prefill chunks: other sessions' turn
        prompt_tokens, reused = len(session.tape), session.turn_reused
        session.turn_reused = 0
        if session.exact_prefix:
            # the prompt as a cold run computes it: a sampled token still pending, or logits
            # lost to a truncation, mean recomputing from the last exact chunk boundary
            prompt = list(session.tape)
            self._prefill.exact_start(session, prompt, len(prompt), logits=True)
            for _ in self._prefill.in_turns(session, prompt):
                yield None
        elif engine.kv_len < len(session.tape):
            engine.prefill(session.tape[engine.kv_len :])
        elif not engine.logits_current():
            # logits were discarded by a truncation: recompute the last token alone
            engine.truncate(engine.kv_len - 1)
            engine.prefill(session.tape[-1:])
        prefill_ms = (time.perf_counter() - received) * 1000
        sampler = engine.sampler(request.sampling, session.tape)
        # bytes the last Decode left unsent continue here, unless the tape has moved since
        # (another prefix or a suffix): then they belong to text that was cut off
        carry = session.pending_bytes if session.pending_at == _tape_end(session.tape) else b""
        session.pending_bytes = b""
        scanner = StopScanner(request.stop, carry)
        output = DecodeOutput(
            split_thinking=request.split_thinking,
            thinking_open=request.split_thinking
            and prompt_opens_thinking(model.detokenize(session.tape[-_THINK_LOOKBACK:])),
            tool_format=constraints.tool_format,
            tools=constraints.tools,
        )
        whole = constraints.whole
        grammar = None if whole is None else TokenConstraint(whole, vocab)
        lazy: TokenConstraint | None = None  # a call's grammar, switched on at its marker
        forced: list[int] = []  # tokens written without sampling (a thinking budget's end)
        stop_reason, stop_string, stop_token = "max_tokens", "", None
        generated, thinking_tokens, ttft_ms, first_at = 0, 0, 0.0, received
        try:
            while generated < request.max_tokens:
                if session.state is SessionState.CLOSING:  # CloseSession: stop within a step
                    stop_reason = "cancelled"
                    break
                if len(session.tape) >= session.n_ctx:
                    stop_reason = "context_full"
                    break
                if engine.kv_len < len(session.tape):
                    # the token sampled last step, unless another session's batch computed it
                    self._compute_sampled(session, model)
                constraint = grammar or lazy
                thinking = output.in_thinking
                budget = request.thinking_budget
                if thinking and budget is not None and thinking_tokens >= budget and not forced:
                    forced = self._thinking_end(model, output.thinking_end, constraint)
                logits = None
                if request.logprobs is not None:
                    logits = np.array(sampler.logits())  # before sampling touches anything
                if forced:
                    token = forced.pop(0)
                else:
                    token = sampler.sample(None if constraint is None else constraint.allowed())
                if constraint is not None:
                    constraint.accept(token)
                session.tape.append(token)
                generated += 1
                thinking_tokens += thinking
                if generated == 1:
                    first_at = time.perf_counter()
                    ttft_ms = (first_at - received) * 1000
                done = grammar is not None and grammar.done
                # offered to other sessions' batches only if this decode will go on to need it
                session.set_decoding(
                    not done
                    and generated < request.max_tokens
                    and len(session.tape) < session.n_ctx
                )
                scored = (
                    ()
                    if logits is None or request.logprobs is None
                    else (token_logprob(logits, token, request.logprobs, model.piece),)
                )
                if not request.sampling.ignore_eos and model.is_end_of_generation(token):
                    stop_reason = "eos"
                    session.set_decoding(False)
                    yield DecodeStep("", (token,), logprobs=scored)
                    break
                if token in request.stop_token_ids:
                    stop_reason, stop_token = "stop_token", token
                    session.set_decoding(False)
                    yield DecodeStep("", (token,), logprobs=scored)
                    break
                text, matched = scanner.feed(model.piece(token))
                piece = output.feed(text)
                if lazy is None and constraints.call is not None and output.in_call:
                    lazy = self._start_call(constraints, output, model, vocab)
                elif lazy is not None and lazy.done:
                    lazy = None  # the call is complete: the model is free again
                    done = not request.parallel_tool_calls  # or the Decode ends with it
                    session.set_decoding(session.decoding and not done)
                step = DecodeStep(
                    piece.text,
                    (token,),
                    thinking=piece.thinking,
                    tool_calls=tuple(piece.calls),
                    logprobs=scored,
                )
                if matched is not None:
                    stop_reason, stop_string = "stop", matched
                    session.set_decoding(False)
                    yield step
                    break
                yield step
                if done:
                    stop_reason = "grammar_end"
                    break
            tail = "" if stop_reason == "stop" else scanner.flush()
            last = output.feed(tail)
            end = output.finish()
            if output.calls and stop_reason in ("eos", "grammar_end"):
                stop_reason = "tool_calls"
            decode_ms = (time.perf_counter() - first_at) * 1000
            final = DecodeFinal(
                stop_reason=stop_reason,
                stop_string=stop_string,
                stop_token=stop_token,
                prompt_tokens=prompt_tokens,
                reused_tokens=reused,
                completion_tokens=generated,
                prefill_ms=prefill_ms,
                ttft_ms=ttft_ms,
                decode_ms=decode_ms,
                # tokens after the first, over the time after the first
                tokens_per_s=(generated - 1) / (decode_ms / 1000) if generated > 1 else 0.0,
                # the last sampled token is on the tape, computed by whatever comes next
                resident=engine.kv_len,
                available=session.n_ctx - len(session.tape),
                thinking_tokens=thinking_tokens,
            )
            yield DecodeStep(
                last.text + end.text,
                (),
                final,
                thinking=last.thinking + end.thinking,
                tool_calls=(*last.calls, *end.calls),
            )
        finally:
            # max_tokens, eos, cancelled: the start of a split character waits for the next call
            session.pending_bytes = b"" if stop_reason == "stop" else scanner.remainder()
            session.pending_at = _tape_end(session.tape)
            session.set_decoding(False)
            sampler.close()
            session.model.index.update(session.id, session.tape)

    @staticmethod
    def _thinking_end(
        model: EngineModel, end: str, constraint: TokenConstraint | None
    ) -> list[int]:
        """The tokens that close a thinking section whose budget ran out; none when a grammar
        in force would refuse them (the grammar wins: it is the output's contract)."""
        tokens = model.tokenize(end, add_special=False, parse_special=True)
        if constraint is not None and not constraint.accepts(tokens):
            return []
        return tokens

    @staticmethod
    def _start_call(
        constraints: DecodeConstraints, output: DecodeOutput, model: EngineModel, vocab: int
    ) -> TokenConstraint | None:
        """Switch on the call grammar at a call's marker, fed the call's text so far (the
        grammar works on bytes, so any tokenization of that text brings it to the same
        state). None when that text already left the grammar: the call is then parsed as
        written, and reported only if it parses."""
        assert constraints.call is not None
        constraint = TokenConstraint(constraints.call, vocab)
        text = output.call_text()
        ids = model.tokenize(text, add_special=False, parse_special=True) if text else []
        if not constraint.accepts(ids):
            return None
        for token in ids:
            constraint.accept(token)
        return constraint

    def _compute_sampled(self, session: Session, model: EngineModel) -> None:
        """Compute ``session``'s last sampled token; where the backend batches, in one engine
        call with every other decoding session's of the same group."""
        rows = model.max_decode_rows  # 1 where batching is not exact (and not asked for)
        peers = self._table.snapshot().values() if rows > 1 else ()
        feeds = feeds_for(session, peers, rows)
        if len(feeds) == 1:
            engine, token = feeds[0]
            engine.prefill([token])
        else:
            model.decode_batch(feeds)
        self._counters.decode_calls += 1
        self._counters.decode_rows += len(feeds)
        self._metrics.decode_rows.observe(len(feeds))
