"""The daemon's HTTP API for tests: served on a free port, and the official openai client on it."""

from __future__ import annotations

import daemons
import openai


def http_url(served: daemons.Served) -> str:
    """The base URL of the daemon's HTTP API, as its lease advertises it once serving."""

    def advertised() -> str | None:
        try:
            url = daemons.lease_json(served.root).get("http_endpoint", "")
        except AssertionError:  # no readable lease yet
            return None
        return str(url) if url else None

    return daemons.wait_for("the HTTP API in the lease", advertised, daemons.STARTUP_LIMIT_S)


def openai_client(served: daemons.Served, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{http_url(served)}/v1", api_key=api_key, max_retries=0)
