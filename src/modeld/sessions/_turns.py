"""The turn verbs on the event loop: EnsurePrefix, PrefillSuffix and Decode.

Each holds its session for one operation (``_admission``), tokenizes off the engine thread
(``ModelPool.borrowed``), and hands the KV work to the engine thread as a generator
(``_prefill``, ``_generation``), waiting for a live context when every one is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass

from modeld._metrics import Metrics
from modeld.chat._tool_formats import detect_format
from modeld.engine._scheduler import EngineScheduler
from modeld.sessions._admission import Admission
from modeld.sessions._generation import Generation
from modeld.sessions._inputs import check_size, to_tokens_rendered
from modeld.sessions._models import ModelPool
from modeld.sessions._prefill import Prefill, held_length
from modeld.sessions._residency import Residency
from modeld.sessions._session import Session
from modeld.sessions._twins import InFlightPrefixes
from modeld.sessions._types import DecodeOptions, DecodeStep, SessionInput
from modeld.structured import DecodeConstraints, GrammarCompiler, prepare_constraints
from modeld.structured._plan import NONE as NO_CONSTRAINTS
from modeldconn._errors import InvalidArgument, RemoteError
from modeldconn._types import DecodeFinal, PrefixResult, SuffixResult

__all__ = ["TapedStep", "Turns"]


@dataclass(frozen=True)
class TapedStep(DecodeStep):
    """A Decode step with the tape's length once its tokens are on it, read on the engine thread
    as the step was made: what a client that stops reading after this step holds."""

    tape_tokens: int = 0


class Turns:
    """:param decode_done: per decoding session, set (from the engine thread) once its Decode's
    engine work has ended; shared with CloseSession, which waits for exactly that."""

    def __init__(
        self,
        *,
        admission: Admission,
        scheduler: EngineScheduler,
        pool: ModelPool,
        residency: Residency,
        prefill: Prefill,
        generation: Generation,
        metrics: Metrics,
        decode_done: dict[str, asyncio.Event],
    ) -> None:
        self._admission = admission
        self._scheduler = scheduler
        self._pool = pool
        self._residency = residency
        self._prefill = prefill
        self._generation = generation
        self._metrics = metrics
        self._decode_done = decode_done
        self._grammars = GrammarCompiler()
        #: EnsurePrefix prompts being computed now (see ``_twins``)
        self.in_flight = InFlightPrefixes()

    # ``held``: the tape length the client says it holds (see ``Prefill.hold``); None keeps the
    # tape as it is.

    async def ensure_prefix(
        self, handle: str, value: SessionInput, held: int | None = None
    ) -> PrefixResult:
        async with self._admission.operation(handle) as session:
            await self._hold(session, held)
            tokens, rendering = await self._tokens_rendered(
                session, value, stage="ensure_prefix", start=True
            )
            # a twin computing the same long prefix right now: copy it once it is done
            await self.in_flight.wait_for_twins(session, tokens)
            with self.in_flight.computing(session, tokens):
                result = await self._admission.waiting_for_room(
                    lambda: self._admission.in_turns(self._prefill.ensure_prefix(session, tokens))
                )
            result = dataclasses.replace(result, rendering=rendering)
            session.reuse.record(
                "ensure_prefix",
                reused=result.reused,
                prefilled=result.prefilled,
                dropped=result.dropped,
                shared=result.shared,
            )
        tokens_metric = self._metrics.tokens
        tokens_metric.labels("prefilled").inc(result.prefilled)
        tokens_metric.labels("reused").inc(result.reused - result.shared)
        tokens_metric.labels("shared").inc(result.shared)
        return result

    async def prefill_suffix(
        self, handle: str, value: SessionInput, held: int | None = None
    ) -> SuffixResult:
        async with self._admission.operation(handle) as session:
            await self._hold(session, held)
            tokens, rendering = await self._tokens_rendered(
                session, value, stage="prefill_suffix", start=not session.tape
            )
            result = await self._admission.waiting_for_room(
                lambda: self._admission.in_turns(self._prefill.prefill_suffix(session, tokens))
            )
            result = dataclasses.replace(result, rendering=rendering)
            session.reuse.record(
                "prefill_suffix",
                reused=result.resident - result.prefilled,
                prefilled=result.prefilled,
            )
        self._metrics.tokens.labels("prefilled").inc(result.prefilled)
        return result

    async def _hold(self, session: Session, held: int | None) -> None:
        """Cut the tape to what the client holds, first of all (see ``Prefill.hold``)."""
        if held is not None:
            await self._scheduler.call(self._live_holding, session, held)

    async def _tokens(
        self,
        session: Session,
        value: SessionInput,
        *,
        stage: str,
        start: bool,
        resident: int | None = None,
    ) -> list[int]:
        """``value`` as tokens, computed on a worker thread (never on the engine thread: a
        long text must not hold every other session's turn), after a size check that refuses
        an input far over the context without tokenizing it.

        :raises ContextOverflow: the input cannot fit, whatever it tokenizes to.
        :raises InvalidArgument / UnsupportedFeature: see ``to_tokens``.
        """
        tokens, _ = await self._tokens_rendered(
            session, value, stage=stage, start=start, resident=resident
        )
        return tokens

    async def _tokens_rendered(
        self,
        session: Session,
        value: SessionInput,
        *,
        stage: str,
        start: bool,
        resident: int | None = None,
    ) -> tuple[list[int], str]:
        """:meth:`_tokens`, and how a chat input was rendered (``to_tokens_rendered``)."""
        # the session is ours (its operation runs), so its tape is not changing under us
        if resident is None:
            resident = 0 if stage == "ensure_prefix" else len(session.tape)
        check_size(value, session.n_ctx - resident, stage, resident, session.n_ctx)
        async with self._pool.borrowed(session.model) as model:
            return await asyncio.to_thread(to_tokens_rendered, model, value, start=start)

    async def decode(
        self,
        handle: str,
        request: DecodeOptions,
        suffix: SessionInput | None = None,
        held: int | None = None,
    ) -> AsyncIterator[TapedStep]:
        async with self._admission.operation(handle) as session:
            # the tape once cut to what the client holds (the cut itself is the stream's first
            # act on the engine thread: one engine job for the whole Decode)
            tape = held_length(session.tape, held)
            try:
                if not tape and suffix is None:
                    raise InvalidArgument(
                        "nothing to continue: EnsurePrefix or PrefillSuffix first",
                        field="suffix",
                    )
                suffix_tokens = (
                    None
                    if suffix is None
                    else await self._tokens(
                        session, suffix, stage="prefill_suffix", start=not tape, resident=tape
                    )
                )
                constraints = await self._constraints(session, request)
            except RemoteError:
                await self._hold(session, held)  # refused, but the claim's cut still applies
                raise
            done = self._decode_done[session.id] = asyncio.Event()
            loop = asyncio.get_running_loop()
            # the KV resident as the Decode starts, for its reuse record (the session is
            # held by this operation: nothing else changes its KV meanwhile)
            resident_before = [0]

            def steps() -> Generator[TapedStep | None, None, None]:
                resident_before[0] = self._residency.resident_len(session)
                return self._taped(
                    session,
                    self._generation.steps(session, request, suffix_tokens, held, constraints),
                    lambda: loop.call_soon_threadsafe(done.set),
                )

            try:
                # live first (waiting for room while every live session is busy); busy from
                # there on, it cannot be parked mid-Decode. Closed here, not by the garbage
                # collector: the operation ends only once its generator is closed on the
                # engine thread
                async with contextlib.aclosing(self._admission.streaming(steps)) as stream:
                    async for step in stream:
                        if step is None:
                            continue
                        if step.final is not None:
                            self._observe(step.final)
                            final = step.final
                            session.reuse.record(
                                "decode",
                                reused=min(resident_before[0], final.prompt_tokens),
                                prefilled=final.prompt_tokens - resident_before[0],
                                dropped=resident_before[0] - final.prompt_tokens,
                                generated=final.completion_tokens,
                            )
                        yield step
            finally:
                del self._decode_done[session.id]

    async def _constraints(self, session: Session, request: DecodeOptions) -> DecodeConstraints:
        """The Decode's grammars, compiled on a worker thread before any KV work (see
        ``modeld.structured``).

        :raises InvalidArgument: a format or tool grammar that does not compile, or tool
            options that contradict each other.
        """
        if request.response_format is None and not request.tools and not request.tool_choice:
            return NO_CONSTRAINTS
        async with self._pool.borrowed(session.model) as model:
            tool_format = request.tool_call_format or detect_format(model.facts.chat_template)
            return await asyncio.to_thread(
                prepare_constraints,
                self._grammars,
                model,
                request.response_format,
                request.tools,
                request.tool_choice,
                tool_format,
                request.parallel_tool_calls,
            )

    def _live_holding(self, session: Session, held: int | None) -> None:
        self._residency.live(session)
        self._prefill.hold(session, held)

    @staticmethod
    def _taped(
        session: Session,
        steps: Generator[DecodeStep | None, None, None],
        stopped: Callable[[], object],
    ) -> Generator[TapedStep | None, None, None]:
        """Engine thread: ``steps`` with the tape's length read as each step is made (the loop
        could not: by the time it reads, the next step may have added a token). ``stopped`` is
        called once the Decode's engine work is over."""
        try:
            for step in steps:
                if step is None:
                    yield None
                    continue
                if step.final is not None:
                    stopped()  # the engine work is over; only delivering the final is left
                yield TapedStep(
                    step.text,
                    step.token_ids,
                    step.final,
                    step.thinking,
                    step.tool_calls,
                    step.logprobs,
                    tape_tokens=len(session.tape),
                )
        finally:
            steps.close()  # closing this one (a cancelled client) closes the Decode's too
            stopped()

    def _observe(self, final: DecodeFinal) -> None:
        self._metrics.tokens.labels("generated").inc(final.completion_tokens)
        if final.completion_tokens:
            self._metrics.ttft_seconds.observe(final.ttft_ms / 1000)
        if final.completion_tokens > 1:
            per_token = final.decode_ms / 1000 / (final.completion_tokens - 1)
            self._metrics.token_seconds.observe(per_token)
