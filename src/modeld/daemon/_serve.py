"""`modeld serve`: the daemon's life, start to finish, as a list of named steps.

From the moment the lease is won until it is released, one task renews it (:meth:`Election.hold`):
through loading (and converting) the ``--model``, serving and draining alike. Any phase, however
long, keeps leadership provable, and a loss of leadership in any of them fences the daemon.

Failure model of the process as a whole:

* every failure a user can cause before serving is a :class:`StartupError`: one line, its exit
  code. Under systemd (``$NOTIFY_SOCKET`` set) an unusable data root is retried every second
  instead, with a STATUS line, so a daemon restarted after a fence waits for the root to come
  back rather than exhausting systemd's start limit;
* a loss of leadership fences: exit 5, whatever the clean-up meets afterwards (an unwritable
  data root cannot turn it into a traceback and exit 1: each clean-up step logs and carries on);
* background tasks (the idle reaper) survive every failure of one round, log it, and run the
  next round;
* on winning the lease, parked KV left by dead instances is removed and what remains counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from modeld._errors import ExitCode, StartupError
from modeld._metrics import Metrics
from modeld.backends import make_backend
from modeld.daemon._config import ServeSettings
from modeld.daemon._sdnotify import notify
from modeld.daemon._storage import prepare_data_root
from modeld.daemon._warmup import Warmer
from modeld.engine._scheduler import EngineScheduler
from modeld.http._listen import HttpListen, parse_http_listen
from modeld.lease._election import Election
from modeld.lease._gate import Gate, Phase
from modeld.lease._identity import Identity, modeld_version
from modeld.lease._store import LeaseStore
from modeld.models._capacity import MemoryBudget
from modeld.models._catalog import ModelCatalog, names_a_path
from modeld.models._catalog_file import CatalogWatcher
from modeld.rpc._auth import read_token_file
from modeld.rpc._listener import parse_listen
from modeld.rpc._server import BoundServer, bind_server
from modeld.rpc._servicer import ModeldServicer
from modeld.rpc._tls import read_tls_identity
from modeld.sessions._manager import SessionManager
from modeld.sessions._parking import ParkingLot
from modeld.sessions._snapshots import SnapshotStore
from modeldconn._errors import RemoteError
from modeldconn._lease import LeaseRecord, LoadedModel
from modeldconn._wire import PROTOCOL

__all__ = ["serve"]

log = logging.getLogger("modeld")
T = TypeVar("T")


class _Deposed(Exception):
    """Leadership ended during a phase (load, drain): the daemon must fence, not carry on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Stopped(Exception):
    """SIGTERM/SIGINT arrived before the daemon served."""


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def _candidate(identity: Identity, settings: ServeSettings, endpoint: str) -> LeaseRecord:
    now = time.time()
    return LeaseRecord(
        instance_id=identity.instance_id,
        pid=identity.pid,
        pid_start_time=identity.pid_start_time,
        host=identity.host,
        endpoint=endpoint,
        backend=settings.backend,
        protocol=PROTOCOL,
        version=modeld_version(),
        acquired_at=now,
        renewed_at=now,
        ttl_s=settings.lease_ttl_s,
        state="starting",
        auth=settings.auth_token_file is not None,
        tls=settings.tls_cert_file is not None,
    )


def _standing_by(holder: str) -> None:
    # A standby is a healthy service for systemd: READY, with a status line saying why it waits.
    notify("READY=1", f"STATUS=standing by; the lease is held by {holder}")
    log.info("standing by: the lease is held by %s", holder)


async def _reap_idle(sessions: SessionManager, settings: ServeSettings) -> None:
    """Park, then close, sessions nobody has used for a while; a round that fails (no room to
    park, a full disk, a bug) is logged and the next one runs: this task ends only when
    cancelled."""
    limits = [
        t for t in (settings.idle_park_s, settings.idle_close_s, settings.unload_after_s) if t > 0
    ]
    if not limits:
        return
    interval = min(30.0, max(0.25, min(limits) / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            await sessions.reap(
                park_after_s=settings.idle_park_s, close_after_s=settings.idle_close_s
            )
            if settings.unload_after_s:
                await sessions.unload_idle_models(settings.unload_after_s)
        except RemoteError as exc:  # e.g. no room to park: try again next round
            log.warning("idle reaper: %s", exc)
        except Exception:  # anything else: said in full, and the reaper lives on
            log.exception("idle reaper: this round failed; trying again in %g s", interval)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has stopped; what it raised, if anything, is dropped."""
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _while_leading(
    work: Awaitable[T], held: asyncio.Future[str], stop: asyncio.Event | None = None
) -> T:
    """``work``'s result, unless leadership ends first (:class:`_Deposed`) or ``stop`` is set
    first (:class:`_Stopped`); either way ``work`` is cancelled (an engine call in progress
    finishes on the engine thread, and its result is dropped)."""
    running = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    watched: set[asyncio.Future[Any]] = {running, held}
    if stopped is not None:
        watched.add(stopped)
    try:
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stopped is not None:
            await _cancel(stopped)
    if held.done():  # checked first: work that finished without provable leadership is void
        await _cancel(running)
        raise _Deposed(held.result())
    if not running.done():
        await _cancel(running)
        raise _Stopped
    return running.result()


async def _fence(gate: Gate, bound: BoundServer, reason: str) -> int:
    notify("STOPPING=1", f"STATUS=fenced: {reason}")
    gate.phase, gate.fence_reason = Phase.FENCED, reason
    await bound.set_serving(False)
    await bound.server.stop(0)
    log.error("fenced, not serving: %s", reason)
    return ExitCode.FENCED


async def _cleanup(what: str, step: Awaitable[Any] | None = None) -> None:
    """Run one clean-up step; a failure is logged, never raised: the exit code stays the one
    the daemon's life earned (0, or 5 when fenced)."""
    try:
        if step is not None:
            await step
    except Exception as exc:
        log.warning("while stopping, %s failed: %s", what, exc)


def _withdraw(listener: Any) -> None:
    try:
        listener.withdraw()
    except OSError as exc:
        log.warning("while stopping, removing the socket failed: %s", exc.strerror or exc)


async def _data_root(settings: ServeSettings, stop: asyncio.Event) -> Path | None:
    """The prepared data root; None if stopped while waiting for it.

    :raises StartupError: the root is unusable (outside systemd: at once).
    """
    said = ""
    while True:
        try:
            return prepare_data_root(settings.data_root)
        except StartupError as exc:
            if not os.environ.get("NOTIFY_SOCKET"):
                raise
            if str(exc) != said:
                said = str(exc)
                notify(f"STATUS={said}; retrying every second")
                log.error("%s; retrying every second", said)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        if stop.is_set():
            return None


def _sweep_parked(lot: ParkingLot) -> None:
    files, size = lot.sweep()
    if files:
        log.info("removed %d parked files (%d bytes) left by earlier instances", files, size)
    if lot.disk_bytes:
        log.warning(
            "%d bytes of parked files could not be removed; counted against --park-disk",
            lot.disk_bytes,
        )


def _socket_dir(requested: Path | None) -> Path | None:
    """``--socket-dir``, created 0700 when missing (systemd creates its RuntimeDirectory)."""
    if requested is None:
        return None
    try:
        requested.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"--socket-dir {requested}: {exc.strerror or exc}") from None
    return requested.absolute()


def _model_roots(settings: ServeSettings) -> tuple[Path, ...]:
    """The operator's roots, plus the file ``--model`` names by path: the operator chose it."""
    model = settings.model
    chosen = [Path(model).expanduser()] if model and names_a_path(model) else []
    return (*settings.allowed_model_roots, *chosen)


async def _preload(sessions: SessionManager, model: str) -> LoadedModel:
    """Load ``--model`` before serving; what the lease will name."""
    as_path = Path(model).expanduser()
    by_path = names_a_path(model)
    try:
        spec = await sessions.resolve(
            "" if by_path else model, "", "", str(as_path) if by_path else ""
        )
        await sessions.preload(spec)
    except RemoteError as exc:
        raise StartupError(f"cannot load --model {model}: {exc}") from None
    return LoadedModel(spec.facts.name, spec.facts.digest)


async def _start_http(
    listen: HttpListen,
    settings: ServeSettings,
    sessions: SessionManager,
    gate: Gate,
    root: Path,
    token: str | None,
    model: LoadedModel | None,
) -> Any:
    """The OpenAI-compatible HTTP API, bound and serving (an ``HttpServer``); imported only
    when asked for, so a daemon without it never loads FastAPI.

    :raises StartupError: the address cannot be bound."""
    from modeld.http._app import HttpContext, create_app
    from modeld.http._binding import SessionBinder
    from modeld.http._server import HttpServer

    binder = SessionBinder(sessions, exact_prefix=settings.exact_prefix)
    binder.start()
    app = create_app(
        HttpContext(
            sessions=sessions,
            binder=binder,
            gate=gate,
            models_dir=root / "models",
            served_model=model.name if model is not None else "",
            auth_token=token,
        )
    )
    server = HttpServer(
        app,
        listen,
        tls_cert=settings.tls_cert_file,
        tls_key=settings.tls_key_file,
        grace_s=settings.drain_grace_s,
    )
    await server.start()
    return server


async def _drain(
    gate: Gate, bound: BoundServer, election: Election, held: asyncio.Future[str], grace_s: float
) -> int:
    """Let in-flight calls finish (``grace_s``) while the lease is still renewed, then release it.

    :raises _Deposed: leadership ended meanwhile; the caller fences (which cuts those calls off).
    """
    notify("STOPPING=1", "STATUS=draining")
    gate.phase = Phase.DRAINING
    await bound.set_serving(False)
    await election.publish(state="draining")
    await _while_leading(bound.server.stop(grace_s), held)  # _Deposed: the caller fences
    await _cancel(held)
    released = await election.release()
    log.info("stopped; lease %s", "released" if released else "was no longer ours")
    return ExitCode.OK


async def serve(settings: ServeSettings) -> int:
    """Run one daemon until a signal (exit 0) or a loss of leadership (exit FENCED).

    :raises StartupError: inconsistent settings, or the data root, listener or lease could not
        be set up.
    """
    settings.validate()
    stop = asyncio.Event()
    _stop_on_signals(stop)
    prepared = await _data_root(settings, stop)
    if prepared is None:
        return ExitCode.OK  # stopped while waiting for the data root
    root = prepared
    identity = Identity.of_this_process()
    token = read_token_file(settings.auth_token_file) if settings.auth_token_file else None
    tls = read_tls_identity(settings.tls_cert_file, settings.tls_key_file)
    listener = parse_listen(
        settings.listen,
        root,
        identity.short_id,
        authenticated=bool(token),
        tls=tls is not None,
        socket_dir=_socket_dir(settings.socket_dir),
    )
    if listener.remote and tls is None:
        log.warning("the bearer token crosses the network in the clear: add --tls-cert/--tls-key")
    http_listen = (
        parse_http_listen(settings.http_listen, authenticated=bool(token))
        if settings.http_listen
        else None
    )
    gate = Gate(identity.instance_id)
    endpoint = ""
    metrics = Metrics()
    scheduler = EngineScheduler()
    lot = ParkingLot(
        max_live=settings.max_live_sessions,
        ram_budget=settings.park_ram_bytes,
        disk_dir=root / "parked",
        disk_budget=settings.park_disk_bytes,
        disk_reserve=settings.disk_reserve_bytes,
    )
    catalog = ModelCatalog(root, settings.backend, _model_roots(settings))
    if catalog.aliases.error:  # no previous catalog to keep in force: refuse to start on it
        raise StartupError(catalog.aliases.error)
    sessions = SessionManager(
        instance_id=identity.instance_id,
        catalog=catalog,
        backend=make_backend(
            settings.backend,
            n_threads=settings.threads or os.cpu_count() or 1,
            cache_dir=root / "cache",
            precision=settings.precision,
            batch_rows=settings.decode_batch_rows,
            device=settings.device,
        ),
        scheduler=scheduler,
        budget=MemoryBudget(limit_bytes=settings.memory_limit_bytes),
        lot=lot,
        snapshots=SnapshotStore(
            root / "snapshots", settings.snapshot_budget_bytes, settings.disk_reserve_bytes
        ),
        metrics=metrics,
        max_loaded_models=settings.max_loaded_models,
        load_timeout_s=settings.load_timeout_s,
    )
    metrics.watch_sessions(sessions.stats, sessions.queue_depth)
    servicer = ModeldServicer(
        identity=identity,
        backend=settings.backend,
        gate=gate,
        endpoint=lambda: endpoint,
        sessions=sessions,
        exact_prefix=settings.exact_prefix,
        catalog=catalog,
    )
    # The catalog reloads on SIGHUP (what `modeld models add/rm` send) and when the file changes
    # (polled every 2 s); aliases a reload adds with eager/background warm-up load behind.
    warmer = Warmer(sessions, catalog)
    watcher = CatalogWatcher(catalog.aliases, on_change=warmer.background)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, watcher.request_reload)
    election = Election(
        LeaseStore(root, ttl_s=settings.lease_ttl_s),
        gate,
        poll_interval_s=settings.poll_interval_s,
        on_renew=metrics.renew_seconds.observe,
        # counted into the lease at each renewal, for `modeld lease show` (Status: live figures)
        activity=lambda: {
            "sessions_open": sessions.stats().sessions_open,
            "embedding_contexts": sessions.embeddings.contexts(),
        },
    )

    # 1. Bind first, so the lease can advertise the real endpoint.
    if settings.metrics_listen:  # before binding: a bad address leaves nothing behind
        log.info("metrics at %s", metrics.serve(settings.metrics_listen))
    bound = await bind_server(listener, gate, servicer, metrics, token, tls)
    endpoint = listener.endpoint(bound.port)
    try:
        await bound.server.start()
        # 2. Win the lease (standing by while another instance holds it).
        record = await election.campaign(
            _candidate(identity, settings, endpoint),
            stop,
            standby=settings.standby,
            on_wait=lambda holder: _standing_by(holder),
        )
        if record is None:
            return ExitCode.OK  # stopped while standing by
        gate.phase = Phase.STARTING
        metrics.leadership.labels("won").inc()
        log.info("leader: instance %s on %s", identity.instance_id, endpoint)
        _sweep_parked(lot)  # before anything of ours is parked
        # From here until the lease is released, `held` renews it, whatever the phase.
        held = asyncio.ensure_future(election.hold())
        try:
            # 3. Load the --model, if any, then the catalog's eager aliases (others load on
            # their first use), as leader.
            model: LoadedModel | None = None
            try:
                if settings.model:
                    model = await _while_leading(_preload(sessions, settings.model), held, stop)
                await _while_leading(warmer.eager(), held, stop)
            except (StartupError, _Stopped) as exc:
                await _cancel(held)
                await election.release()
                if isinstance(exc, StartupError):
                    raise
                log.info("stopped while loading; lease released")
                return ExitCode.OK
            # 4. Serve, until a signal or a loss of leadership. The HTTP API binds now, as leader
            # only: a standby never holds its address, and after a takeover the new leader binds
            # the same one.
            http: Any = None
            if http_listen is not None:
                try:
                    http = await _start_http(
                        http_listen, settings, sessions, gate, root, token, model
                    )
                except StartupError:
                    await _cancel(held)
                    await election.release()
                    raise
            try:
                listener.publish_stable_name()
            except OSError as exc:  # for people and tools only: clients dial the lease's endpoint
                log.warning("cannot point modeld.sock at this instance: %s", exc.strerror or exc)
            advertised: dict[str, Any] = {"model": model} if model else {}
            if http is not None:  # clients and `modeld lease show` find the HTTP API here
                advertised["http_endpoint"] = http.url
            await election.publish(state="serving", **advertised)
            gate.phase = Phase.SERVING
            await bound.set_serving(True)
            notify("READY=1", f"STATUS=serving {settings.backend} on {endpoint}")
            log.info("serving backend %s", settings.backend)
            reaper = asyncio.ensure_future(_reap_idle(sessions, settings))
            watching = asyncio.ensure_future(watcher.run())
            warmer.background()
            try:
                await _while_leading(stop.wait(), held)
            finally:
                await _cancel(reaper)
                await _cancel(watching)
                await warmer.close()
                if http is not None:  # stopping or fenced: in-flight requests get the grace
                    await _cleanup("stopping the HTTP API", http.stop())
            # 5. Drain, still renewing.
            metrics.leadership.labels("released").inc()
            return await _drain(gate, bound, election, held, settings.drain_grace_s)
        except _Deposed as deposed:
            metrics.leadership.labels("lost").inc()
            return await _fence(gate, bound, deposed.reason)
        finally:
            await _cancel(held)
    finally:
        await _cleanup("stopping the server", bound.server.stop(0))
        _withdraw(listener)
        await _cleanup("closing the sessions", sessions.close_all())
        try:
            scheduler.close()
        except Exception as exc:
            log.warning("while stopping, closing the engine failed: %s", exc)
