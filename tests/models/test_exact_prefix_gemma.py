"""exact_prefix on Gemma 3 270M, both backends (issue 21): a warm turn equals one cold
EnsurePrefix of the whole prompt, every chat turn equals its whole history computed cold, and
shared prefixes and snapshots keep it. Without the option the same comparison can differ (the
issue's 677-token document), which is why the option exists."""

from __future__ import annotations

from collections.abc import Iterator

import exact_prefix_checks as checks
import pytest
from daemons import Served, stop_served
from served_models import BACKENDS, GEMMA, serve_gemma

from modeld.sessions._prefill import PREFIX_CHUNK


@pytest.fixture(scope="module", params=BACKENDS)
def gemma(request: pytest.FixtureRequest) -> Iterator[Served]:
    daemon = serve_gemma(request.param, "--exact-prefix")
    yield daemon
    stop_served(daemon)


def test_the_daemon_default_is_reported(gemma: Served) -> None:
    assert gemma.client.status().exact_prefix is True
    with gemma.client.open_session(GEMMA) as session:
        assert session.info.exact_prefix is True
    with gemma.client.open_session(GEMMA, exact_prefix=False) as session:
        assert session.info.exact_prefix is False


@pytest.mark.parametrize("prefix", range(4), ids=["C-1", "C", "C+1", "5C+7"])
def test_warm_turn_equals_cold_prompt(gemma: Served, prefix: int) -> None:
    checks.check_warm_equals_cold(gemma.client, GEMMA, (prefix,))


def test_every_chat_turn_equals_the_whole_history_cold(gemma: Served) -> None:
    checks.check_chat(gemma.client, GEMMA)


def test_shared_prefixes_and_snapshots_keep_it(gemma: Served) -> None:
    checks.check_kept_through(gemma.client, GEMMA, PREFIX_CHUNK)
