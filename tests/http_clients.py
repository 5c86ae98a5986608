"""The daemon's HTTP API for tests: served on a free port, and the official openai client on it."""

from __future__ import annotations

import re

import daemons
import openai

#: what the daemon logs once the HTTP listener is bound (port 0 picks a free one)
_BOUND = re.compile(r"OpenAI-compatible HTTP API at (https?://\S+)")


def http_url(served: daemons.Served) -> str:
    """The base URL the daemon's log says its HTTP API is bound to."""

    def bound() -> str | None:
        found = _BOUND.search(served.log.read_text())
        return found.group(1) if found else None

    return daemons.wait_for("the HTTP API to be bound", bound, daemons.STARTUP_LIMIT_S)


def openai_client(served: daemons.Served, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{http_url(served)}/v1", api_key=api_key, max_retries=0)
