"""`modeld sessions list|show|evict|pin`: the daemon's sessions, as the operator sees them.

The CLI names no client (no ``x-modeld-client``), so the daemon treats it as the operator, who
was admitted by the socket's permissions or the auth token, and sees and controls every
session. ``--client`` narrows the list to one client's sessions (its id or its name).

A table for people; ``--json`` prints one JSON object for scripts (``{"sessions": [...]}`` for
``list``, ``{"session": {...}, "turns": [...]}`` for ``show``, ``{"session": {...}}`` for
``evict`` and ``pin``), with the wire's field names.

Exit codes: 0 done; 1 the daemon refused (an unknown handle, a busy session, a tier that cannot
take the KV: the one-line message names the reason); 2 a bad argument; 3 no daemon to talk to.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NoReturn

import click

import modeldconn
from modeld._errors import ExitCode
from modeld.cli._group import cli, data_root_option, fail
from modeldconn._dataroot import resolve_data_root

__all__ = ["sessions"]

#: the daemon answered with a refusal
_REFUSED = 1
#: EvictSession's tiers (the client's ``EVICT_TIERS``, written out: the daemon's package imports
#: from modeldconn only what it shares with the daemon)
EVICT_TIERS = ("ram", "disk", "drop")


@cli.group()
def sessions() -> None:
    """The daemon's sessions: list, show one with its reuse history, evict, pin."""


def _fail(message: str, code: int) -> NoReturn:
    fail(message, code)
    raise SystemExit(code)  # fail() exits; this says so to the type checker


def _client(data_root: Path | None) -> modeldconn.Client:
    client = modeldconn.Client(data_root=resolve_data_root(data_root))
    try:
        client._leader()
    except modeldconn.ProbeError as exc:
        _fail(f"no daemon to talk to: {exc}", ExitCode.STARTUP)
    return client


def _refused(exc: modeldconn.ModeldError) -> NoReturn:
    if isinstance(exc, modeldconn.ProbeError | modeldconn.Unavailable):
        _fail(f"no daemon to talk to: {exc}", ExitCode.STARTUP)
    reason = getattr(exc, "reason", "")
    _fail(f"{reason}: {exc}" if reason else str(exc), _REFUSED)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _pin(s: modeldconn.SessionListing) -> str:
    return f"{s.pin_remaining_s:.0f}s" if s.pinned else "-"


_COLUMNS = ("HANDLE", "MODEL", "CLIENT", "TAPE", "WHERE", "KV", "IDLE", "PIN", "PREFIX", "BUSY")


def _row(s: modeldconn.SessionListing) -> tuple[str, ...]:
    return (
        s.handle,
        s.model,
        s.client_name or s.client_id[:8] or "-",
        str(s.tape_tokens),
        s.residency,
        _size(s.kv_bytes),
        f"{s.idle_s:.0f}s",
        _pin(s),
        s.prefix_hash[:12],
        "busy" if s.busy else "",
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _describe(s: modeldconn.SessionListing) -> str:
    client = f"{s.client_name or '(unnamed)'} ({s.client_id})" if s.client_id else "(none)"
    lines = [
        f"handle     {s.handle}",
        f"model      {s.model} ({s.model_digest[:12]})",
        f"client     {client}",
        f"tape       {s.tape_tokens} tokens of n_ctx {s.n_ctx}, prefix sha256 {s.prefix_hash}",
        f"kv         {s.residency}, {_size(s.kv_bytes)}, {s.kv_cache_type}",
        f"idle       {s.idle_s:.1f} s{', busy now' if s.busy else ''}",
        f"pin        {f'{s.pin_remaining_s:.0f} s left' if s.pinned else 'none'}",
    ]
    return "\n".join(lines)


@sessions.command("list")
@data_root_option
@click.option(
    "--all",
    "all_clients",
    is_flag=True,
    help="Every client's sessions (the default: the CLI is the operator).",
)
@click.option("--client", default=None, help="Only this client's sessions (its id or name).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sessions_list(
    data_root: Path | None, all_clients: bool, client: str | None, as_json: bool
) -> None:
    """Every session: handle, model, client, tape, where its KV is, bytes, idle, pin."""
    if all_clients and client is not None:
        _fail("--all and --client contradict each other", ExitCode.USAGE)
    try:
        listing = _client(data_root).list_sessions(operator=True)
    except modeldconn.ModeldError as exc:
        _refused(exc)
    if client is not None:
        listing = [s for s in listing if client in (s.client_id, s.client_name)]
    if as_json:
        click.echo(json.dumps({"sessions": [dataclasses.asdict(s) for s in listing]}, indent=2))
        return
    if not listing:
        click.echo("no sessions")
        return
    click.echo(_table([_COLUMNS, *(_row(s) for s in listing)]))


@sessions.command("show")
@click.argument("handle")
@data_root_option
@click.option("--last", type=click.IntRange(min=0), default=0, help="Turns to show (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sessions_show(handle: str, data_root: Path | None, last: int, as_json: bool) -> None:
    """One session and its last turns' reuse: tokens kept, computed, dropped, generated."""
    try:
        explained = _client(data_root).explain_session(handle, last, operator=True)
    except modeldconn.ModeldError as exc:
        _refused(exc)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(explained), indent=2))
        return
    click.echo(_describe(explained.session))
    if not explained.turns:
        click.echo("turns      none yet")
        return
    header = ("AT", "OPERATION", "REUSED", "PREFILLED", "DROPPED", "GENERATED", "SHARED", "FROM")
    rows = [
        (
            time.strftime("%H:%M:%S", time.localtime(t.at_unix_s)),
            t.operation,
            str(t.reused),
            str(t.prefilled),
            str(t.dropped),
            str(t.generated),
            str(t.shared),
            t.restored_from or "-",
        )
        for t in explained.turns
    ]
    click.echo()
    click.echo(_table([header, *rows]))


@sessions.command("evict")
@click.argument("handle")
@click.option(
    "--to", "to", type=click.Choice(EVICT_TIERS), required=True, help="Where its KV goes."
)
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sessions_evict(handle: str, to: str, data_root: Path | None, as_json: bool) -> None:
    """Park a session's KV in RAM or on disk now, or drop it (the tape stays; its next turn
    recomputes it)."""
    try:
        listed = _client(data_root).evict_session(handle, to, operator=True)
    except modeldconn.ModeldError as exc:
        _refused(exc)
    if as_json:
        click.echo(json.dumps({"session": dataclasses.asdict(listed)}, indent=2))
        return
    click.echo(f"{listed.handle}: {listed.residency}, {_size(listed.kv_bytes)}")


@sessions.command("pin")
@click.argument("handle")
@click.option(
    "--ttl",
    "ttl_s",
    type=click.FloatRange(min=0),
    required=True,
    help="Seconds the pin lasts (0 unpins).",
)
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sessions_pin(handle: str, ttl_s: float, data_root: Path | None, as_json: bool) -> None:
    """Exempt a session from idle parking and idle closing for --ttl seconds."""
    try:
        listed = _client(data_root).pin_session(handle, ttl_s, operator=True)
    except modeldconn.ModeldError as exc:
        _refused(exc)
    if as_json:
        click.echo(json.dumps({"session": dataclasses.asdict(listed)}, indent=2))
        return
    state = f"pinned for {listed.pin_remaining_s:.0f} s" if listed.pinned else "unpinned"
    click.echo(f"{listed.handle}: {state}")
