"""`modeld models add|show|list|rm` offline: the catalog's round trip, one-line errors naming the
line, and the digest cache (a second listing hashes nothing)."""

from __future__ import annotations

import json
from pathlib import Path

from daemons import run_modeld
from served_models import TINY_FILE

from modeld.models._catalog import ModelCatalog
from modeld.models._inventory import list_models


def _models(root: Path, *args: str) -> tuple[int, str, str]:
    out = run_modeld("models", *args, "--data-root", str(root))
    return out.returncode, out.stdout, out.stderr


def test_round_trip_add_show_list_rm(data_root: Path) -> None:
    code, out, err = _models(
        data_root, "add", "chat", str(TINY_FILE), "--task", "generate", "--n-ctx", "512",
        "--kv-cache-type", "q8_0", "--warmup", "background", "--load-timeout", "30",
    )  # fmt: skip
    assert code == 0, err
    assert "no daemon serves this data root" in out
    code, out, _ = _models(data_root, "show", "chat", "--json")
    shown = json.loads(out)
    assert code == 0
    assert shown["alias"]["model"] == str(TINY_FILE.absolute())
    assert shown["alias"]["tasks"] == ["generate"]
    assert (shown["alias"]["n_ctx"], shown["alias"]["kv_cache_type"]) == (512, "q8_0")
    assert (shown["alias"]["warmup"], shown["alias"]["load_timeout_s"]) == ("background", 30.0)
    assert shown["model"]["architecture"] == "qwen2"

    code, out, _ = _models(data_root, "list", "--json")
    listing = json.loads(out)
    assert code == 0 and not listing["daemon"] and listing["catalog_error"] == ""
    entry = next(e for e in listing["models"] if e["alias"] == "chat")
    assert entry["source"] == "catalog" and entry["backend"] == "llama"
    assert entry["size_bytes"] == TINY_FILE.stat().st_size
    assert len(entry["digest"]) == 64 and entry["architecture"] == "qwen2"
    assert entry["tasks"] == ["generate"] and entry["loaded"] is False

    # adding it again is refused unless --replace; a bad value is a usage error, one line
    code, _, err = _models(data_root, "add", "chat", str(TINY_FILE))
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = _models(data_root, "add", "other", str(TINY_FILE), "--required")
    assert code == 2 and 'warmup = "eager"' in err
    assert "other" not in (data_root / "models.toml").read_text()

    code, out, err = _models(data_root, "rm", "chat")
    assert code == 0, err
    code, _, err = _models(data_root, "show", "chat")
    assert code == 2 and "no alias 'chat'" in err


def test_invalid_catalog_names_the_line_and_is_not_overwritten(data_root: Path) -> None:
    catalog = data_root / "models.toml"
    catalog.write_text(
        f'[models.a]\nmodel = "{TINY_FILE}"\n\n[models.b]\nmodel = "x"\nwarmup = "soon"\n'
    )
    code, out, err = _models(data_root, "list", "--json")
    assert code == 0
    assert json.loads(out)["catalog_error"].startswith("models.toml:6: [models.b] warmup")
    before = catalog.read_text()
    code, _, err = _models(data_root, "add", "c", str(TINY_FILE))
    assert code == 3 and err.startswith("modeld: models.toml:6: ")
    assert len(err.strip().splitlines()) == 1
    assert catalog.read_text() == before  # nothing written over a catalog it could not read

    catalog.write_text('[models.a]\nmodel = "x"\nn_ctx = \n')
    code, _, err = _models(data_root, "rm", "a")
    assert code == 3 and err.startswith("modeld: models.toml:3: ")


def test_digests_are_cached_on_disk(data_root: Path) -> None:
    models = data_root / "models"
    models.mkdir()
    (models / "tiny.gguf").symlink_to(TINY_FILE)
    first = ModelCatalog(data_root, "")
    entries = [e for e in list_models(first) if e.source == "file"]
    assert [Path(e.path).name for e in entries] == ["tiny.gguf"]
    assert first.digests.computed == 1
    cache = data_root / "cache" / "digests.json"
    stamp = cache.stat().st_mtime_ns
    # a second listing (a new process, as `modeld models list` is) hashes nothing
    code, out, _ = _models(data_root, "list", "--json")
    assert code == 0
    digest = next(e["digest"] for e in json.loads(out)["models"] if e["path"].endswith("tiny.gguf"))
    assert digest == entries[0].digest
    assert cache.stat().st_mtime_ns == stamp
    second = ModelCatalog(data_root, "")
    list_models(second)
    assert second.digests.computed == 0
    assert str((models / "tiny.gguf").absolute()) in json.loads(cache.read_text())
