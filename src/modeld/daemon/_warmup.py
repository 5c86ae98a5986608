"""Warm-up policies of the catalog's aliases: ``eager``, ``background``, ``lazy``.

* ``eager``: loaded before the daemon reports serving, one after another, in the catalog's
  order, while the lease is renewed (the caller runs :meth:`Warmer.eager` under the election's
  hold, as it does the ``--model`` preload). A ``required`` alias that fails stops the start:
  :class:`StartupError`, one line, exit 3 (``ExitCode.STARTUP``, as a ``--model`` that cannot
  load). Any other failure is logged and the daemon serves without that model.
* ``background``: loaded right after serving begins, on a task of their own; a failure is
  logged. An alias added or changed at run time (a catalog reload) with ``eager`` or
  ``background`` is loaded this way too.
* ``lazy`` (the default): on first use, as every model not in the catalog.

Loads go through the session manager's public ``resolve`` and ``preload`` (the model pool's
single-flight load): a first use that races a background load waits for the same load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from modeld._errors import StartupError
from modeld.models._aliases import Alias
from modeld.models._catalog import ModelCatalog
from modeld.sessions._manager import SessionManager

__all__ = ["Warmer"]

log = logging.getLogger("modeld")


class Warmer:
    def __init__(self, sessions: SessionManager, catalog: ModelCatalog) -> None:
        self._sessions = sessions
        self._catalog = catalog
        self._tasks: set[asyncio.Task[None]] = set()

    def _with_policy(self, policy: str) -> list[Alias]:
        return [a for a in self._catalog.aliases.aliases.values() if a.warmup == policy]

    async def _load(self, alias: Alias) -> None:
        """:raises Exception: whatever resolving or loading raised."""
        spec = await self._sessions.resolve(alias.name, "", "", "")
        await self._sessions.preload(spec)

    async def eager(self) -> None:
        """Load the ``eager`` aliases now.

        :raises StartupError: a ``required`` one did not load (the message names it, its line
            in models.toml and why).
        """
        state = self._catalog.aliases
        if await asyncio.to_thread(state.changed_on_disk):  # edited while we stood by
            await asyncio.to_thread(state.reload)
        for alias in self._with_policy("eager"):
            try:
                await self._load(alias)
            except Exception as exc:  # a typed RemoteError, or an engine's own failure
                where = f"models.toml:{alias.line}"
                if alias.required:
                    raise StartupError(
                        f"required alias {alias.name!r} ({where}) did not load: {exc}"
                    ) from None
                log.error(
                    "eager alias %r (%s) did not load; serving without it: %s",
                    alias.name,
                    where,
                    exc,
                )
            else:
                log.info("eager alias %r loaded", alias.name)

    def background(self, aliases: Iterable[Alias] | None = None) -> None:
        """Start loading ``aliases`` (default: the ``background`` ones) on a task; returns at
        once. ``lazy`` aliases among ``aliases`` are skipped."""
        chosen = self._with_policy("background") if aliases is None else list(aliases)
        chosen = [a for a in chosen if a.warmup != "lazy"]
        if not chosen:
            return
        task = asyncio.ensure_future(self._in_background(chosen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _in_background(self, aliases: list[Alias]) -> None:
        for alias in aliases:
            try:
                await self._load(alias)
            except Exception as exc:  # logged; the daemon serves on, the alias stays lazy
                log.error("background alias %r did not load: %s", alias.name, exc)
            else:
                log.info("background alias %r loaded", alias.name)

    async def close(self) -> None:
        """Cancel the background loads still running (the daemon stops)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            # stopping: what it met is moot
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
