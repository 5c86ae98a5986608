"""A session's engine work is its owner's turn on the engine queue (issue 13, fault 5), even when
the call names no client: modeldconn sends its client id on OpenSession only, so before this
every client's EnsurePrefix and Decode ran as one tenant "" (no turns between clients, and no
time-sized prefill calls, which wait for the engine to be shared between tenants). Measured
with bench/ttft_breakdown.py --hog-tokens: a bystander's turn during another client's prefills
went from ~1.5 s (three waits behind 430 ms untimed prefill calls) to ~0.5 s."""

from __future__ import annotations

from typing import Any

from fake_engine import fake_spec
from session_harness import Harness

from modeld.engine._scheduler import TENANT, EngineScheduler
from modeld.sessions._types import DecodeOptions, TokenInput

SPEC = fake_spec()


def _tenants_of_jobs(harness: Harness) -> list[str]:
    """Record the tenant of every job put on the engine queue from now on."""
    seen: list[str] = []
    queue: Any = harness.scheduler._jobs
    put = queue.put

    def recording(tenant: str, job: Any) -> None:
        seen.append(tenant)
        put(tenant, job)

    queue.put = recording
    return seen


async def test_session_calls_naming_no_client_run_as_the_sessions_owner(
    make_harness: Any,
) -> None:
    harness: Harness = make_harness()
    manager = harness.manager
    manager.attach("client-a")
    manager.attach("client-b")
    mine, _ = await manager.open(SPEC, 256, owner="client-a")
    theirs, _ = await manager.open(SPEC, 256, owner="client-b")
    seen = _tenants_of_jobs(harness)
    assert TENANT.get() == ""  # the calls below name no client, as modeldconn's do
    await manager.ensure_prefix(mine.handle, TokenInput((5, 6, 7)))
    options = DecodeOptions.from_fields({"max_tokens": 2, "ignore_eos": True})
    async for _ in manager.decode(mine.handle, options):
        pass
    assert seen and set(seen) == {"client-a"}
    seen.clear()
    await manager.ensure_prefix(theirs.handle, TokenInput((8, 9)))
    assert seen and set(seen) == {"client-b"}
    assert TENANT.get() == ""  # set for the operation only


async def test_a_session_without_owner_keeps_the_callers_tenant(make_harness: Any) -> None:
    harness: Harness = make_harness()
    session, _ = await harness.manager.open(SPEC, 256)  # the operator's: no owner
    seen = _tenants_of_jobs(harness)
    TENANT.set("http")
    await harness.manager.ensure_prefix(session.handle, TokenInput((5, 6, 7)))
    assert seen and set(seen) == {"http"}


async def test_anonymous_jobs_do_not_make_the_engine_shared() -> None:
    """The daemon's own jobs (tenant "": the --model preload, releases, the reaper) are not
    another client: a lone client's prefill right after one is not time-sized (its chunks, and
    without exact_prefix its bits, would otherwise depend on timing)."""
    scheduler = EngineScheduler(name="anonymous-test")
    seen: list[bool] = []
    try:
        TENANT.set("")
        await scheduler.call(lambda: None)  # the daemon's job, a moment ago
        TENANT.set("a")
        await scheduler.call(lambda: seen.append(scheduler.contended()))
        TENANT.set("b")  # a named client, a moment ago: shared
        await scheduler.call(lambda: None)
        TENANT.set("a")
        await scheduler.call(lambda: seen.append(scheduler.contended()))
    finally:
        scheduler.close()
    assert seen == [False, True]
