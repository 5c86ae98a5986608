"""Model paths from clients stay inside the models dir and the operator's allowed roots.

The check follows every symlink, so neither ``..`` nor a link planted in an allowed directory
leads out; links the operator put in the models dir are honoured; a refused path is refused
before the daemon looks at the file, so it cannot be used to probe what exists elsewhere.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import Served, stop_served
from served_models import TINY, TINY_FILE, serve_tiny

import modeldconn
from modeldconn import ModelRef


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def served(allowed: Path) -> Iterator[Served]:
    daemon = serve_tiny("llama", "--allow-model-root", str(allowed))
    yield daemon
    stop_served(daemon)


def _greedy(client: modeldconn.Client, ref: ModelRef | str) -> tuple[int, ...]:
    with client.open_session(ref) as session:
        session.ensure_prefix("The quick brown fox")
        return session.generate(max_tokens=6).token_ids


def test_paths_outside_the_roots_are_forbidden(served: Served, tmp_path: Path) -> None:
    client = served.client
    outside = tmp_path / "copy.gguf"
    shutil.copyfile(TINY_FILE, outside)
    escapes = [
        outside,  # a real model, but not where the operator allowed
        tmp_path / "missing.gguf",  # refused, not "not found": existence is not disclosed
        served.root / "models" / ".." / ".." / tmp_path.name / "copy.gguf",
        Path("/etc/passwd"),
    ]
    for path in escapes:
        with pytest.raises(modeldconn.ModelPathForbidden, match="outside the model roots"):
            client.open_session(ModelRef(path=str(path)))
        with pytest.raises(modeldconn.ModelPathForbidden):
            client.describe(ModelRef(path=str(path)))
    assert _greedy(client, TINY)  # the daemon still serves


def test_a_link_in_an_allowed_root_cannot_lead_out(
    served: Served, allowed: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "copy.gguf"
    shutil.copyfile(TINY_FILE, outside)
    (allowed / "sneaky.gguf").symlink_to(outside)
    (allowed / "sneaky-dir").symlink_to(tmp_path, target_is_directory=True)
    for path in (allowed / "sneaky.gguf", allowed / "sneaky-dir" / "copy.gguf"):
        with pytest.raises(modeldconn.ModelPathForbidden):
            served.client.open_session(ModelRef(path=str(path)))


def test_allowed_roots_and_the_operators_links_serve(served: Served, allowed: Path) -> None:
    client = served.client
    inside = allowed / "nested" / "tiny-copy.gguf"
    inside.parent.mkdir(exist_ok=True)
    shutil.copyfile(TINY_FILE, inside)
    by_name = _greedy(client, TINY)
    assert _greedy(client, ModelRef(path=str(inside))) == by_name
    # models/tiny.gguf is the operator's link to tests/fixtures: admitted as placed
    linked = served.root / "models" / f"{TINY}.gguf"
    assert linked.is_symlink()
    assert _greedy(client, ModelRef(path=str(linked))) == by_name
