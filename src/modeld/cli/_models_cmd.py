"""`modeld models list|add|rm|show`: the catalog (``<data root>/models.toml``) and the models
on disk.

Exit codes: 0 done; 2 a bad argument (click's usage errors, an unknown alias, an alias that
exists without ``--replace``, a MODEL that is not there); 3 the catalog file cannot be used
(invalid: the message names its line; unreadable or unwritable). ``add`` and ``rm`` validate the
resulting catalog before writing it (atomically), then tell a daemon serving this data root on
this host to reload (SIGHUP); a daemon elsewhere picks the change up by polling within 2 s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any, NoReturn

import click

import modeldconn
from modeld._errors import ExitCode
from modeld.cli._group import cli, data_root_option, fail
from modeld.models._aliases import KV_CACHE_TYPES, WARMUP_POLICIES, Alias
from modeld.models._catalog import PACKAGED_MODELS, ModelCatalog, names_a_path
from modeld.models._catalog_file import (
    BACKENDS,
    PRECISIONS,
    TASKS,
    CatalogError,
    catalog_path,
    parse_catalog,
    read_catalog,
    render_catalog,
    validate_alias_name,
    write_catalog,
)
from modeld.models._inventory import InventoryEntry, list_models
from modeld.models._ir_facts import is_ir_dir
from modeldconn._dataroot import resolve_data_root
from modeldconn._lease import this_host
from modeldconn._probe import probe

__all__ = ["models"]


@cli.group()
def models() -> None:
    """The model catalog (<data root>/models.toml) and the models on disk."""


def _fail(message: str, code: int) -> NoReturn:
    fail(message, code)
    raise SystemExit(code)  # fail() exits; this says so to the type checker


def _aliases_or_fail(root: Path) -> dict[str, Alias]:
    try:
        return read_catalog(catalog_path(root))
    except CatalogError as exc:
        _fail(f"{exc} (fix {catalog_path(root)} first)", ExitCode.STARTUP)


def _write_or_fail(root: Path, aliases: dict[str, Alias]) -> None:
    try:
        write_catalog(catalog_path(root), aliases)
    except CatalogError as exc:
        fail(str(exc), ExitCode.STARTUP)


def _tell_daemon(root: Path) -> str:
    """SIGHUP to the lease holder when it runs on this host; what happened, for people."""
    result = probe(data_root=root)
    lease = result.lease
    if result.state is not modeldconn.ProbeState.RUNNING or lease is None:
        return "no daemon serves this data root; the next one reads the catalog as it starts"
    if lease.host != this_host():
        return f"the daemon on {lease.host} reloads it within 2 s (it polls the file)"
    try:
        os.kill(lease.pid, signal.SIGHUP)
    except OSError as exc:
        return f"cannot signal the daemon (pid {lease.pid}: {exc.strerror}); it reloads within 2 s"
    return f"told the daemon (pid {lease.pid}) to reload it"


def _entry_as_json(entry: InventoryEntry | modeldconn.ModelEntry) -> dict[str, Any]:
    body = dataclasses.asdict(entry)
    body["tasks"] = list(entry.tasks)
    return body


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size else "-"


@models.command("list")
@data_root_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One object: {"catalog_path", "catalog_error", "daemon", "models": [{"alias", '
    '"path", "source", "backend", "tasks", "size_bytes", "digest", "architecture", '
    '"loaded", "warmup", "error"}]}.',
)
def list_(data_root: Path | None, as_json: bool) -> None:
    """Every alias, then every GGUF file and IR directory under the model roots.

    Asks the daemon serving this data root when there is one (it knows its extra model roots
    and what is loaded); otherwise reads the files here (``loaded`` is then false).
    """
    root = resolve_data_root(data_root)
    entries: list[InventoryEntry] | list[modeldconn.ModelEntry] | None = None
    daemon = False
    if probe(data_root=root).serving:
        try:
            with modeldconn.Client(data_root=root) as client:
                listing = client.list_models()
            entries, daemon = list(listing.models), True
            path, error = listing.catalog_path, listing.catalog_error
        except modeldconn.ModeldError as exc:
            click.echo(f"modeld: the daemon did not answer ({exc}); listing offline", err=True)
    if entries is None:
        catalog = ModelCatalog(root, backend="")
        entries = list_models(catalog)
        path, error = str(catalog.aliases.path), catalog.aliases.error
    if as_json:
        body = {
            "catalog_path": path,
            "catalog_error": error,
            "daemon": daemon,
            "models": [_entry_as_json(e) for e in entries],
        }
        click.echo(json.dumps(body, indent=2))
        return
    if error:
        click.echo(f"modeld: catalog not in force: {error}", err=True)
    rows = [
        (
            e.alias or "-",
            e.source,
            e.backend,
            e.architecture or "-",
            ",".join(e.tasks) or "-",
            _size(e.size_bytes),
            e.digest[:12] or "-",
            "yes" if e.loaded else "no",
            e.path + (f"  ({e.error})" if e.error else ""),
        )
        for e in entries
    ]
    header = ("ALIAS", "SOURCE", "BACKEND", "ARCH", "TASKS", "SIZE", "DIGEST", "LOADED", "PATH")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


def _model_argument(root: Path, model: str) -> str:
    """MODEL as the catalog keeps it: a path made absolute, or a name that exists.

    :raises click.BadParameter: nothing there."""
    if names_a_path(model) or Path(model).expanduser().is_absolute():
        path = Path(model).expanduser().absolute()
        if not (path.is_file() or is_ir_dir(path)):
            raise click.BadParameter(f"no GGUF file or IR directory at {path}", param_hint="MODEL")
        return str(path)
    models_dir = root / "models"
    present = (models_dir / model).exists() or (models_dir / f"{model}.gguf").is_file()
    if not present and model not in PACKAGED_MODELS:
        raise click.BadParameter(
            f"no model named {model!r} in {models_dir} and no packaged one "
            f"({', '.join(PACKAGED_MODELS)}); give a path to a file",
            param_hint="MODEL",
        )
    return model


@models.command("add")
@click.argument("alias")
@click.argument("model")
@data_root_option
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Default: any.")
@click.option(
    "--task", "tasks", type=click.Choice(TASKS), multiple=True, help="Repeatable; default: all."
)
@click.option("--n-ctx", type=click.IntRange(min=0), default=0, help="Default context, tokens.")
@click.option("--kv-cache-type", type=click.Choice(KV_CACHE_TYPES), default=None)
@click.option("--threads", type=click.IntRange(min=0), default=0)
@click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="openvino.")
@click.option("--device", default="", help="openvino: CPU | GPU | NPU | AUTO.")
@click.option("--n-gpu-layers", type=click.IntRange(min=-1), default=None, help="llama; -1: all.")
@click.option("--warmup", type=click.Choice(WARMUP_POLICIES), default="lazy", show_default=True)
@click.option("--load-timeout", type=click.FloatRange(min=0), default=0.0, help="Seconds.")
@click.option(
    "--required", is_flag=True, help="With --warmup eager: a failed load stops the start."
)
@click.option("--replace", is_flag=True, help="Replace ALIAS if it exists.")
def add(
    alias: str,
    model: str,
    data_root: Path | None,
    backend: str | None,
    tasks: tuple[str, ...],
    n_ctx: int,
    kv_cache_type: str | None,
    threads: int,
    precision: str | None,
    device: str,
    n_gpu_layers: int | None,
    warmup: str,
    load_timeout: float,
    required: bool,
    replace: bool,
) -> None:
    """Add ALIAS for MODEL (a GGUF file, an IR directory, or a name under models/ or packaged)
    to the catalog, and tell a running daemon."""
    root = resolve_data_root(data_root)
    if (problem := validate_alias_name(alias)) is not None:
        raise click.BadParameter(problem, param_hint="ALIAS")
    aliases = _aliases_or_fail(root)
    if alias in aliases and not replace:
        _fail(
            f"alias {alias!r} exists (models.toml:{aliases[alias].line}); "
            "use --replace, or `modeld models rm` it first",
            ExitCode.USAGE,
        )
    entry = Alias(
        name=alias,
        model=_model_argument(root, model),
        backend=backend or "",
        tasks=tuple(dict.fromkeys(tasks)),
        n_ctx=n_ctx,
        kv_cache_type=kv_cache_type or "",
        threads=threads,
        precision=precision or "",
        device=device,
        n_gpu_layers=n_gpu_layers,
        warmup=warmup,
        load_timeout_s=load_timeout,
        required=required,
    )
    aliases[alias] = entry
    try:  # the catalog a daemon would read must be valid: checked before anything is written
        parse_catalog(render_catalog(aliases))
    except CatalogError as exc:
        _fail(str(exc).split(": ", 1)[-1], ExitCode.USAGE)
    _write_or_fail(root, aliases)
    click.echo(f"added {alias} -> {entry.model} to {catalog_path(root)}; {_tell_daemon(root)}")


@models.command("rm")
@click.argument("alias")
@data_root_option
def rm(alias: str, data_root: Path | None) -> None:
    """Remove ALIAS from the catalog (the model file stays), and tell a running daemon."""
    root = resolve_data_root(data_root)
    aliases = _aliases_or_fail(root)
    if aliases.pop(alias, None) is None:
        _fail(f"no alias {alias!r} in {catalog_path(root)}", ExitCode.USAGE)
    _write_or_fail(root, aliases)
    click.echo(f"removed {alias} from {catalog_path(root)}; {_tell_daemon(root)}")


@models.command("show")
@click.argument("alias")
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="The alias's keys plus the model's facts.")
def show(alias: str, data_root: Path | None, as_json: bool) -> None:
    """ALIAS's settings, and the facts of the model it names (read here, no weights loaded)."""
    root = resolve_data_root(data_root)
    aliases = _aliases_or_fail(root)
    found = aliases.get(alias)
    if found is None:
        known = ", ".join(aliases) or "none"
        _fail(f"no alias {alias!r} in {catalog_path(root)} (aliases: {known})", ExitCode.USAGE)
    body: dict[str, Any] = dataclasses.asdict(found)
    body["tasks"] = list(found.tasks)
    facts: dict[str, Any] = {}
    error = ""
    try:
        spec = ModelCatalog(root, backend="").resolve(alias, "", "", "")
        facts = {
            "path": str(spec.facts.path),
            "size_bytes": spec.facts.file_bytes,
            "digest": spec.facts.digest,
            "architecture": spec.facts.architecture,
            "tasks": list(spec.facts.tasks),
            "context_length": spec.facts.context_length,
        }
    except modeldconn.RemoteError as exc:
        error = str(exc)
    if as_json:
        click.echo(json.dumps({"alias": body, "model": facts, "error": error}, indent=2))
        return
    for key, value in body.items():
        if key not in ("name", "line"):
            click.echo(f"{key:<16} {value}")
    for key, value in facts.items():
        click.echo(f"{key:<16} {value}")
    if error:
        click.echo(f"error            {error}")
