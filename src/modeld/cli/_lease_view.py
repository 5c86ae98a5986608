"""`modeld lease show`: the lease and what it proves, for a person or as JSON."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime, timezone
from typing import Any

from modeldconn._probe import ProbeResult

__all__ = ["lease_as_json", "lease_as_text"]


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lease_as_json(result: ProbeResult) -> str:
    """The lease's own fields plus ``probe_state`` (and ``stale_reason`` / ``detail``)."""
    body: dict[str, Any] = dataclasses.asdict(result.lease) if result.lease else {}
    body["probe_state"] = result.state.value
    body["stale_reason"] = result.reason
    body["detail"] = result.detail
    body["expires_in_s"] = None if result.expires_in_s is None else round(result.expires_in_s, 3)
    return json.dumps(body, indent=2, sort_keys=True)


def lease_as_text(result: ProbeResult, root: str) -> str:
    state = result.state.value + (f" ({result.reason})" if result.reason else "")
    lines = [f"data root    {root}", f"probe state  {state}: {result.detail}"]
    lease = result.lease
    if lease is not None:
        now = time.time()
        expires = result.expires_in_s
        lines += [
            f"holder       instance {lease.instance_id}",
            f"             pid {lease.pid} on host {lease.host}",
            f"endpoint     {lease.endpoint}",
            f"http api     {lease.http_endpoint or '-'}",
            f"backend      {lease.backend}",
            f"state        {lease.state}",
            f"age          {now - lease.acquired_at:.1f} s (acquired {_when(lease.acquired_at)})",
            f"renewed      {now - lease.renewed_at:.1f} s ago (ttl {lease.ttl_s:g} s)",
            "expires in   "
            + ("-" if expires is None else f"{expires:.1f} s" if expires >= 0 else "expired"),
            f"version      modeld {lease.version}, protocol {lease.protocol}",
            f"activity     {lease.sessions_open} sessions open, "
            f"{lease.embedding_contexts} embedding contexts (as of the last renewal)",
        ]
        if lease.model is not None:
            lines.append(f"model        {lease.model.name} ({lease.model.digest[:16]})")
    return "\n".join(lines)
