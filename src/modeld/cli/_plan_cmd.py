"""`modeld plan MODEL`: whether and how a model would run, with no weights loaded.

The daemon answers when one serves the data root (its backend, its free memory, what it has
loaded); otherwise the plan is computed here, offline, for ``--backend`` (default llama) as a
daemon started now would see it, and says so.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

import modeldconn
from modeld._errors import ExitCode
from modeld.cli._group import cli, data_root_option, fail
from modeld.daemon._config import BACKENDS
from modeld.models._aliases import KV_CACHE_TYPES
from modeld.models._catalog import names_a_path
from modeld.models._devices import OPENVINO_DEVICES
from modeldconn._dataroot import resolve_data_root

__all__ = ["plan_as_json", "plan_as_text", "plan_offline"]


def plan_offline(root: Path, model: str, backend: str, device: str, n_ctx: int, kv: str) -> Any:
    """The plan a daemon serving ``backend`` on ``root`` would give now (nothing loaded, all
    memory free but the reserve).

    :raises RemoteError: the typed errors Plan answers with.
    :raises ImportError: ``backend``'s engine library is not installed.
    """
    from modeld.models._capacity import MemoryBudget
    from modeld.models._catalog import ModelCatalog
    from modeld.models._plan import Served, plan_reference

    if backend == "llama":
        from modeld.backends.llama._backend import LlamaBackend as Backend
    else:
        from modeld.backends.openvino._backend import OpenVinoBackend as Backend  # type: ignore[assignment]
    by_path = names_a_path(model)
    # offline, as the person who typed the path: their own file is theirs to read
    catalog = ModelCatalog(root, backend, allowed_roots=[Path(model)] if by_path else [])
    served = Served(backend, Backend.capabilities, device)
    ref = ("" if by_path else model, "", "", model if by_path else "")
    free = MemoryBudget().free_bytes(0)
    return plan_reference(
        catalog, ref, served, lambda spec: (free, False), n_ctx=n_ctx, kv_cache_type=kv
    )


def plan_as_json(plan: modeldconn.Plan, *, offline: bool) -> str:
    """One JSON object: the issue's keys (executable, backend, device, support_level, reason,
    fallback_reason, capabilities, memory{weights, kv_per_token, overhead, free}, max_context,
    sessions_at_default_context), then the rest of the plan."""
    memory = plan.memory
    body: dict[str, Any] = {
        "executable": plan.executable,
        "backend": plan.backend,
        "device": plan.device,
        "support_level": plan.support_level,
        "reason": plan.reason,
        "fallback_reason": plan.fallback_reason,
        "capabilities": dataclasses.asdict(plan.capabilities),
        "memory": {
            "weights": memory.weights_bytes,
            "kv_per_token": memory.kv_bytes_per_token,
            "overhead": memory.overhead_bytes,
            "free": memory.free_bytes,
            "required": memory.required_bytes,
            "weights_resident": memory.weights_resident,
        },
        "max_context": plan.max_context,
        "sessions_at_default_context": plan.sessions_at_default_context,
        "fix": plan.fix,
        "device_reason": plan.device_reason,
        "n_gpu_layers": plan.n_gpu_layers,
        "n_ctx": plan.n_ctx,
        "default_context": plan.default_context,
        "fits": plan.fits,
        "kv_cache_type": plan.kv_cache_type,
        "alias": plan.alias,
        "loaded": plan.loaded,
        "offline": offline,
        "model": None,
    }
    if plan.facts is not None:
        facts = plan.facts
        body["model"] = {
            "name": facts.name,
            "path": facts.path,
            "architecture": facts.architecture,
            "context_length": facts.context_length,
            "tasks": list(facts.tasks),
        }
    return json.dumps(body)


def _mb(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def plan_as_text(plan: modeldconn.Plan, where: str) -> str:
    """A summary for people; ``where`` says who computed it."""
    name = plan.facts.name if plan.facts else "?"
    level = plan.support_level + (f": {plan.reason}" if plan.reason else "")
    lines = [
        f"plan             {name} on {plan.backend} ({where})",
        f"executable       {'yes' if plan.executable else 'no'}",
        f"support          {level}",
    ]
    if plan.fix:
        lines.append(f"fix              {plan.fix}")
    if plan.facts is None:
        return "\n".join(lines)
    memory = plan.memory
    weights = "resident" if memory.weights_resident else _mb(memory.weights_bytes)
    gpu = f", n_gpu_layers {plan.n_gpu_layers}" if plan.backend == "llama" else ""
    lines += [
        f"device           {plan.device}{gpu}: {plan.device_reason}",
        *([f"fallback         {plan.fallback_reason}"] if plan.fallback_reason else []),
        f"tasks            {', '.join(plan.facts.tasks)}",
        f"memory           weights {weights} + KV {memory.kv_bytes_per_token:,} B/token "
        f"({plan.kv_cache_type}) x {plan.n_ctx} + overhead {_mb(memory.overhead_bytes)} "
        f"= {_mb(memory.required_bytes)}; free {_mb(memory.free_bytes)}: "
        f"{'fits' if plan.fits else 'does NOT fit'}",
        f"max context      {plan.max_context} tokens (trained {plan.facts.context_length})",
        f"sessions         {plan.sessions_at_default_context} at the default context "
        f"({plan.default_context} tokens)",
        "capabilities     "
        + (", ".join(k for k, v in dataclasses.asdict(plan.capabilities).items() if v) or "none"),
    ]
    return "\n".join(lines)


@cli.command()
@click.argument("model")
@data_root_option
@click.option("--n-ctx", type=click.IntRange(min=0), default=0, help="Context (0: default).")
@click.option(
    "--kv-cache-type",
    type=click.Choice(KV_CACHE_TYPES),
    default=None,
    help="KV cache type (default: the alias's, else f16).",
)
@click.option(
    "--backend",
    type=click.Choice(sorted(BACKENDS)),
    default=None,
    help="Offline: plan for this backend (default llama). With a daemon: ask it for a model "
    "of this type (it says when it serves another).",
)
@click.option(
    "--device",
    type=click.Choice(OPENVINO_DEVICES, case_sensitive=False),
    default="CPU",
    show_default=True,
    help="Offline, openvino: the device `modeld serve --device` would ask for.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plan(
    model: str,
    data_root: Path | None,
    n_ctx: int,
    kv_cache_type: str | None,
    backend: str | None,
    device: str,
    as_json: bool,
) -> None:
    """Whether and how MODEL (a name, alias or path) would run, without loading it: support
    level, device, memory arithmetic, the largest context and sessions that fit."""
    root = resolve_data_root(data_root)
    client = modeldconn.Client(data_root=root)
    kv = kv_cache_type or ""
    try:
        try:
            client._leader()
        except modeldconn.ProbeError as exc:
            where = f"offline, no daemon serves {root}: {exc}"
            offline = True
        else:
            where, offline = "from the daemon", False
        if offline:
            chosen = backend or "llama"
            try:
                result = plan_offline(root, model, chosen, device.upper(), n_ctx, kv)
            except ImportError:
                module, extra = BACKENDS[chosen]
                fail(
                    f"planning for {chosen} needs {module}: pip install 'modeld[{extra}]'",
                    ExitCode.USAGE,
                )
        else:
            by_path = names_a_path(model)
            ref = modeldconn.ModelRef(
                name="" if by_path else model,
                type=backend or "",
                path=str(Path(model).absolute()) if by_path else "",
            )
            result = client.plan(ref, n_ctx=n_ctx, kv_cache_type=kv)
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)
    finally:
        client.close()
    click.echo(plan_as_json(result, offline=offline) if as_json else plan_as_text(result, where))
