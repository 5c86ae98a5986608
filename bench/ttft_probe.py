"""A modeld daemon with timers on the steps of a turn, for bench/ttft_breakdown.py.

    python bench/ttft_probe.py serve --data-root ROOT ...   (the arguments of `modeld serve`)

The daemon is the real one, started through this file: before it runs, this wraps the engine
thread's steps (queue, prefix lookup, context acquisition, parking restore, prefill, sampling)
in timers that append one line a call to ``$MODELD_TTFT_PROBE`` (JSON: part, start, end,
exclusive seconds, the tenant (client id) whose job ran, and for prefill the session's n_ctx,
which tells a benchmark's sessions apart: session calls carry no client id, so their tenant is
""; CLOCK_MONOTONIC, the clock the client reads too). Nothing of this exists in
a daemon started the usual way: the switch is starting it here, so the serving path carries no
timer when it is off. ``MODELD_TTFT_POOL=0`` serves without the lane pool (every empty
llama.cpp context freed at once, as before the pool) for a side-by-side run; with
``PYTHONPATH=DIR/src`` it serves another source tree's daemon (a baseline) with the same timers.

Parts (exclusive: a nested timed call's time goes to its own part):

- ``queue``: a job waiting in the engine scheduler's queue (put to get);
- ``lcp``: longest-common-prefix and prefix-index lookups (``common_prefix``, donor search);
- ``context``: acquiring a llama.cpp context and sequence (``Residency.open_context``, the
  reopen of a parked or dropped session: a pooled lane or a new ``llama_init_from_model``);
- ``restore``: loading parked state or a donor's prefix into the sequence;
- ``prefill``: ``llama_decode`` of prompt tokens (``LlamaSession.prefill``);
- ``step``: batched decode steps (``decode_batch``);
- ``sample``: the sampler chain's pick of a token.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_out_lock = threading.Lock()
_local = threading.local()
#: the tenant of the job the engine thread runs now (one engine thread: one value)
_running = [""]


def _emit(
    part: str,
    start: float,
    end: float,
    exclusive: float,
    tenant: str | None = None,
    n_ctx: int = 0,
) -> None:
    line = json.dumps(
        {
            "part": part,
            "start": start,
            "end": end,
            "excl": exclusive,
            "tenant": _running[0] if tenant is None else tenant,
            "n_ctx": n_ctx,
        }
    )
    with _out_lock, open(os.environ["MODELD_TTFT_PROBE"], "a", encoding="utf-8") as out:
        out.write(line + "\n")


def _timed(
    part: str, fn: Callable[..., Any], n_ctx: Callable[[Any], int] = lambda _: 0
) -> Callable[..., Any]:
    """``fn`` with its exclusive time (less that of timed calls inside it) recorded as ``part``;
    ``n_ctx(first argument)``: the session's context size, where the call knows it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stack: list[float] = _local.__dict__.setdefault("stack", [])
        stack.append(0.0)  # time of timed calls nested in this one
        start = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            end = time.monotonic()
            children = stack.pop()
            if stack:
                stack[-1] += end - start
            _emit(part, start, end, end - start - children, n_ctx=n_ctx(args[0]) if args else 0)

    return wrapper


def install() -> None:
    """Wrap the steps named in this module's docstring (the daemon's own modules, patched in
    place before any of them runs)."""
    from modeld.backends.llama import _backend, _lane, _sampler
    from modeld.engine import _scheduler
    from modeld.sessions import _parking, _prefill, _residency

    if os.environ.get("MODELD_TTFT_POOL", "1") == "0":
        _lane.IDLE_LANES = 0

    put_at: dict[int, float] = {}
    put, get = _scheduler._FairQueue.put, _scheduler._FairQueue.get

    def timed_put(self: Any, tenant: str, job: Any) -> None:
        put_at[id(job)] = time.monotonic()
        put(self, tenant, job)

    def timed_get(self: Any) -> tuple[str, Any]:
        tenant, job = get(self)
        started = time.monotonic()
        queued = put_at.pop(id(job), started)
        _running[0] = tenant
        _emit("queue", queued, started, started - queued, tenant)
        return tenant, job

    _scheduler._FairQueue.put = timed_put  # type: ignore[method-assign]
    _scheduler._FairQueue.get = timed_get  # type: ignore[method-assign]

    from modeld.sessions._prefix_index import common_prefix

    # _prefill calls it by its own module's name for it
    setattr(_prefill, "common_prefix", _timed("lcp", common_prefix))  # noqa: B010
    _prefill.Prefill._share_from_donor = _timed(  # type: ignore[method-assign]
        "lcp", _prefill.Prefill._share_from_donor
    )
    _residency.Residency.open_context = _timed(  # type: ignore[method-assign]
        "context", _residency.Residency.open_context
    )
    _residency.Residency._reopen = _timed(  # type: ignore[method-assign]
        "context", _residency.Residency._reopen
    )
    _parking.ParkingLot.restore = _timed(  # type: ignore[method-assign]
        "restore", _parking.ParkingLot.restore
    )
    session = _backend.LlamaSession
    session.adopt_prefix = _timed("restore", session.adopt_prefix)  # type: ignore[method-assign]
    session.prefill = _timed(  # type: ignore[method-assign]
        "prefill", session.prefill, lambda engine: int(engine.n_ctx)
    )
    model = _backend.LlamaModel
    model.decode_batch = _timed("step", model.decode_batch)  # type: ignore[method-assign]
    sampler = _sampler.LlamaSampler
    sampler.sample = _timed("sample", sampler.sample)  # type: ignore[method-assign]


if __name__ == "__main__":
    if not os.environ.get("PYTHONPATH"):  # a baseline tree's src comes by PYTHONPATH
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    install()
    from modeld.cli._main import main

    sys.argv[0] = "modeld"
    main()
