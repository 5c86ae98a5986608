"""One conversation turn over HTTP, whatever the API: bind a session, EnsurePrefix the rendered
prompt (the common prefix is reused), Decode, and the cache-bust diagnostics.

Every router (OpenAI chat and completions here; Anthropic Messages and OpenAI Responses plug in
the same way) turns its request into a ``SessionInput`` and ``DecodeOptions`` and calls
:func:`start_turn`; everything that can fail is done before it returns, so a router can still
answer with an HTTP error status, and a stream starts only once the Decode has.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from modeld.backends._base import check_generates
from modeld.http._binding import Binding, Divergence, SessionBinder
from modeld.models._facts import ModelSpec
from modeld.sessions._manager import SessionManager
from modeld.sessions._models import LoadedModel
from modeld.sessions._turns import TapedStep
from modeld.sessions._types import DecodeOptions, SessionInput, TokenInput
from modeldconn._errors import InvalidArgument, SessionNotFound
from modeldconn._types import PrefixResult

__all__ = ["Diagnostics", "Turn", "field_names", "resolve_model", "start_turn"]

log = logging.getLogger("modeld.http")

REUSED_HEADER = "x-modeld-reused-tokens"
DIVERGENCE_HEADER = "x-modeld-divergence"
SESSION_HEADER = "x-modeld-session"


@contextlib.contextmanager
def field_names(paths: Mapping[str, str]) -> Iterator[None]:
    """Name a refused field as the request names it: the session layer says ``tokens`` or
    ``temperature``; a chat request's client knows ``messages`` and ``temperature``."""
    try:
        yield
    except InvalidArgument as error:
        field = error.metadata.get("field", "")
        error.metadata["field"] = paths.get(field, field)
        raise


async def resolve_model(sessions: SessionManager, name: str) -> ModelSpec:
    """:raises ModelNotFound: no such model (404). :raises InvalidArgument: a name that is
    not a bare name (``field`` ``model``)."""
    with field_names({"": "model"}):
        return await sessions.resolve(name, "", "", "")


@dataclass(frozen=True)
class Diagnostics:
    """What a turn reused, and where its prompt left the longest cached prefix."""

    prompt_tokens: int
    reused_tokens: int
    divergence: Divergence | None
    binding: str  #: how the session was chosen (``Binding.how``)
    #: of ``reused_tokens``, those copied from another session's KV (a fork: a new session, or
    #: a concurrent request of a conversation whose session was busy); 0: its own KV or none
    shared_tokens: int = 0

    def headers(self) -> dict[str, str]:
        """``x-modeld-reused-tokens: N`` and ``x-modeld-divergence``: ``none``, or
        ``POSITION; before="…"; after="…"`` with the texts percent-encoded (URL-safe)."""
        divergence = "none"
        if self.divergence is not None:
            quote = urllib.parse.quote
            d = self.divergence
            divergence = f'{d.position}; before="{quote(d.before)}"; after="{quote(d.after)}"'
        return {
            REUSED_HEADER: str(self.reused_tokens),
            DIVERGENCE_HEADER: divergence,
        }

    def body(self) -> dict[str, Any]:
        """The ``modeld`` extension field of a response body."""
        divergence = None
        if self.divergence is not None:
            d = self.divergence
            divergence = {
                "position": d.position,
                "window": d.window,
                "before": d.before,
                "after": d.after,
                "cached_tokens": d.cached_tokens,
            }
        return {
            "reused_tokens": self.reused_tokens,
            "prompt_tokens": self.prompt_tokens,
            "divergence": divergence,
            "binding": self.binding,
            "shared_tokens": self.shared_tokens,
        }


class Turn:
    """A started turn: its Decode's steps (:meth:`steps`, iterate once) and diagnostics. The
    session stays bound until the steps end or :meth:`close` is called."""

    def __init__(
        self,
        binder: SessionBinder,
        binding: Binding,
        prefix: PrefixResult,
        diagnostics: Diagnostics,
        stream: AsyncIterator[TapedStep],
        first: TapedStep | None,
    ) -> None:
        self._binder = binder
        self.binding = binding
        self.prefix = prefix
        self.diagnostics = diagnostics
        self._stream = stream
        self._first = first
        self._closed = False

    async def steps(self) -> AsyncIterator[TapedStep]:
        try:
            if self._first is not None:
                yield self._first
                self._first = None
            async for step in self._stream:
                yield step
        finally:
            await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            closer = getattr(self._stream, "aclose", None)
            if closer is not None:
                await closer()  # a client gone mid-stream cancels the Decode
        finally:
            self._binder.release(self.binding)


async def start_turn(
    sessions: SessionManager,
    binder: SessionBinder,
    model: str,
    value: SessionInput,
    options: DecodeOptions,
    name: str | None = None,
    how_named: str = "x-session-id",
) -> Turn:
    """Bind, EnsurePrefix and start the Decode of one turn.

    :raises ModelNotFound: an unknown ``model`` (404).
    :raises CapabilityMismatch: a model that cannot generate (an embedding model).
    :raises ContextOverflow: the prompt does not fit a session's context.
    :raises InvalidArgument: a refused input or option (the grammar that does not compile,
        a tool_choice naming no tool), before the session's KV is touched by the Decode.
    :raises Overloaded / InsufficientMemory: no room for a session.
    """
    spec = await resolve_model(sessions, model)
    check_generates(spec.facts)
    loaded = await sessions.load_model(spec)
    tokens, _ = await sessions.render(loaded, value)
    cached = await sessions.cached(loaded, tokens)
    divergence = await binder.divergence(loaded, tokens, cached)
    binding = await binder.acquire(spec, cached, name, how_named)
    for attempt in range(2):
        try:
            return await _run(sessions, binder, loaded, binding, tokens, divergence, options)
        except SessionNotFound:
            # closed by the idle reaper between binding and EnsurePrefix: once more, new
            binder.release(binding)
            if attempt:
                raise
            binding = await binder.acquire(spec, [], None)
            binding = Binding(binding.handle, "new", name)
    raise AssertionError("unreachable")


async def _run(
    sessions: SessionManager,
    binder: SessionBinder,
    loaded: LoadedModel,
    binding: Binding,
    tokens: list[int],
    divergence: Divergence | None,
    options: DecodeOptions,
) -> Turn:
    try:
        prefix = await sessions.ensure_prefix(binding.handle, TokenInput(tuple(tokens)))
        stream = sessions.decode(binding.handle, options)
        first = await anext(stream, None)
    except SessionNotFound:
        raise
    except BaseException:
        binder.release(binding)
        raise
    diagnostics = Diagnostics(len(tokens), prefix.reused, divergence, binding.how, prefix.shared)
    if divergence is not None:
        log.info(
            "prompt of %d tokens diverged from the longest cached prefix at token %d "
            "(a tape of %d): %r|%r; reused %d, prefilled %d",
            len(tokens),
            divergence.position,
            divergence.cached_tokens,
            divergence.before,
            divergence.after,
            prefix.reused,
            prefix.prefilled,
        )
    return Turn(binder, binding, prefix, diagnostics, stream, first)
