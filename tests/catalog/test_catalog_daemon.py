"""The catalog on real daemons (llama, the tiny fixture; Gemma for the long eager load): reload
without a restart (SIGHUP from `modeld models add`, and the 2 s poll of hand edits), an invalid
catalog keeps the old one, eager/background warm-up, a required eager alias that cannot load."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import STARTUP_LIMIT_S, DaemonPool, Served, run_modeld, stop_served, wait_for
from served_models import TINY_FILE, gemma_gguf, require_backend, serve_tiny

import modeldconn

RELOAD_LIMIT_S = 10.0  #: the poll runs every 2 s; generous for a busy 2-core machine


@pytest.fixture
def served() -> Iterator[Served]:
    daemon = serve_tiny("llama")
    yield daemon
    stop_served(daemon)


def _describes(client: modeldconn.Client, name: str) -> bool:
    try:
        client.describe(name)
    except modeldconn.ModelNotFound:
        return False
    return True


def test_added_alias_is_served_without_a_restart(served: Served) -> None:
    out = run_modeld("models", "add", "quick", str(TINY_FILE), "--data-root", str(served.root))
    assert out.returncode == 0, out.stderr
    assert "told the daemon" in out.stdout  # SIGHUP: no need to wait for the poll
    client = served.client
    wait_for("the alias", lambda: _describes(client, "quick"), RELOAD_LIMIT_S)
    with client.open_session("quick") as session:
        session.ensure_prefix("Hello")
        assert session.generate(max_tokens=2).final.completion_tokens >= 1
    status = client.status()
    assert status.catalog_aliases == 1 and status.catalog_error == ""
    assert status.catalog_path == str(served.root / "models.toml")
    # the listing goes through the daemon: the alias's file is the loaded --model's
    listed = run_modeld("models", "list", "--json", "--data-root", str(served.root))
    body = json.loads(listed.stdout)
    assert body["daemon"] is True
    entry = next(e for e in body["models"] if e["alias"] == "quick")
    assert entry["loaded"] is True and entry["architecture"] == "qwen2"

    out = run_modeld("models", "rm", "quick", "--data-root", str(served.root))
    assert out.returncode == 0, out.stderr
    wait_for("the alias gone", lambda: not _describes(client, "quick"), RELOAD_LIMIT_S)


def _error_on(client: modeldconn.Client, line: int) -> str | None:
    error = client.status().catalog_error
    return error if error.startswith(f"models.toml:{line}: ") else None


def test_invalid_catalog_keeps_the_previous_one(served: Served) -> None:
    catalog = served.root / "models.toml"
    client = served.client
    catalog.write_text(f'[models.kept]\nmodel = "{TINY_FILE}"\n')  # a hand edit: the poll
    wait_for("the first catalog", lambda: _describes(client, "kept"), RELOAD_LIMIT_S)
    for text, line in [
        (f'[models.kept]\nmodel = "{TINY_FILE}"\n\n[models.new]\nmodel = \n', 5),  # syntax
        (f'[models.kept]\nmodel = "{TINY_FILE}"\n\n[models.new]\nmodel = "x"\nthreads = -2\n', 6),
    ]:
        catalog.write_text(text)
        error = wait_for(
            f"catalog_error on line {line}",
            functools.partial(_error_on, client, line),
            RELOAD_LIMIT_S,
        )
        assert "\n" not in error
        assert _describes(client, "kept") and not _describes(client, "new")
        assert client.status().catalog_aliases == 1
    catalog.write_text(f'[models.new]\nmodel = "{TINY_FILE}"\n')
    wait_for("the fixed catalog", lambda: _describes(client, "new"), RELOAD_LIMIT_S)
    assert client.status().catalog_error == "" and not _describes(client, "kept")


def _catalog(root: Path, text: str) -> None:
    models = root / "models"
    models.mkdir(exist_ok=True)
    (root / "models.toml").write_text(text)


def test_eager_loads_before_serving_and_background_after(daemons: DaemonPool) -> None:
    require_backend("llama")
    gemma = gemma_gguf()
    _catalog(
        daemons.root,
        f'[models.warm]\nmodel = "{TINY_FILE}"\nwarmup = "eager"\nrequired = true\n\n'
        f'[models.behind]\nmodel = "{gemma}"\nwarmup = "background"\n\n'
        f'[models.idle]\nmodel = "{TINY_FILE}"\n',
    )
    daemon = daemons.start("--backend", "llama")
    daemons.wait_leader(STARTUP_LIMIT_S + 30)
    with modeldconn.Client(data_root=daemons.root) as client:
        status = client.status()  # the first answer as serving: eager is already in
        warm = [m for m in status.models if m.weights_loaded and m.alias == "warm"]
        assert warm, status.models
        wait_for(
            "the background alias",
            lambda: any(m.alias == "behind" and m.weights_loaded for m in client.status().models),
            STARTUP_LIMIT_S + 30,
        )
    log = daemon.log()
    assert log.index("serving backend llama") < log.index("background alias 'behind' loaded")
    assert log.index("eager alias 'warm' loaded") < log.index("serving backend llama")


def test_required_eager_alias_that_cannot_load_stops_the_start(daemons: DaemonPool) -> None:
    require_backend("llama")
    broken = daemons.root / "models" / "broken.gguf"
    _catalog(
        daemons.root,
        f'[models.fine]\nmodel = "{TINY_FILE}"\nwarmup = "eager"\n\n'
        f'[models.must]\nmodel = "{broken}"\nwarmup = "eager"\nrequired = true\n',
    )
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    daemon = daemons.start("--backend", "llama")
    assert daemon.wait(STARTUP_LIMIT_S + 30) == 3  # ExitCode.STARTUP
    last = daemon.log().strip().splitlines()[-1]
    assert re.match(r"modeld: required alias 'must' \(models\.toml:5\) did not load: ", last)
    assert modeldconn.probe(data_root=daemons.root).state is not modeldconn.ProbeState.RUNNING


def test_non_required_eager_failure_serves(daemons: DaemonPool) -> None:
    require_backend("llama")
    _catalog(daemons.root, '[models.gone]\nmodel = "/nonexistent/x.gguf"\nwarmup = "eager"\n')
    daemon = daemons.start("--backend", "llama")
    daemons.wait_leader(STARTUP_LIMIT_S + 30)
    assert "eager alias 'gone' (models.toml:1) did not load; serving without it" in daemon.log()


def test_invalid_catalog_at_start_is_one_line_exit_3(daemons: DaemonPool) -> None:
    _catalog(daemons.root, '[models.a]\nmodel = "x"\nbogus = 1\n')
    daemon = daemons.start("--backend", "llama")
    assert daemon.wait(STARTUP_LIMIT_S) == 3
    assert daemon.log().strip().splitlines()[-1] == (
        "modeld: models.toml:3: [models.a]: unknown key 'bogus' (known: model, backend, tasks, "
        "n_ctx, kv_cache_type, threads, precision, device, n_gpu_layers, warmup, "
        "load_timeout_s, required)"
    )


_LOADED = re.compile(r"loaded (\S+) \(\w+\) in ([\d.]+) s")


def test_eager_load_longer_than_the_lease_ttl_still_serves(daemons: DaemonPool) -> None:
    """Gemma and the tiny model eager, with --lease-ttl 1.0: leadership lasts 0.75 s after a
    renewal, so an eager phase longer than that serves only if the lease is renewed during it."""
    require_backend("llama")
    _catalog(
        daemons.root,
        f'[models.big]\nmodel = "{gemma_gguf()}"\nwarmup = "eager"\nrequired = true\n\n'
        f'[models.small]\nmodel = "{TINY_FILE}"\nwarmup = "eager"\nrequired = true\n',
    )
    started = time.monotonic()
    daemon = daemons.start("--backend", "llama", ttl_s=1.0)
    daemons.wait_leader(STARTUP_LIMIT_S + 60)
    time.sleep(2.0)  # serving on, renewed, well past the TTL
    assert daemon.alive() and daemons.leader_pid() == daemon.pid
    loads = sum(float(m[2]) for m in _LOADED.finditer(daemon.log()))
    if loads <= 0.75:
        pytest.skip(f"the eager loads took {loads:.2f} s, within one leadership window")
    assert "fenced" not in daemon.log()
    assert time.monotonic() - started > 1.0
