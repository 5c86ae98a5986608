"""``<data root>/models.toml``: the catalog of aliases, read, validated, written and watched.

The file holds one table per alias::

    [models.chat]                       # the alias: a bare name (letters, digits, . _ -)
    model = "gemma3-270m"               # a GGUF file, an IR directory or a packaged/bare name;
                                        # a relative path is relative to <data root>/models/
    backend = "llama"                   # "llama" | "openvino"; omitted: the daemon's own
    tasks = ["generate"]                # subset of "generate", "embed", "rerank"
    n_ctx = 4096                        # a session's default context, tokens
    kv_cache_type = "q8_0"              # "f16" | "q8_0" | "q4_0"
    threads = 2
    precision = "f16"                   # openvino: "f16" | "f32" | "bf16"
    device = "CPU"                      # openvino: CPU | GPU | NPU | AUTO (and OpenVINO's forms)
    n_gpu_layers = 99                   # llama: layers to offload, -1 = all; omitted: fitted
    warmup = "eager"                    # "eager" | "background" | "lazy" (default)
    load_timeout_s = 60
    required = true                     # only with warmup = "eager": a failed load stops the start

Every key but ``model`` is optional. Anything else (an unknown key, a wrong type, a value out of
its set, an alias name that is not bare, ``required`` without ``eager``) is refused as ONE line
naming where: ``models.toml:12: ...`` (syntax errors come with tomllib's line and column;
semantic ones with the line of the key, else of the alias's table header, found by a light scan
of the text). A missing file is an empty catalog.

A running daemon reloads the file on SIGHUP (what ``modeld models add/rm`` send, so a change
takes effect at once) and by polling its (mtime, size, inode) every 2 s (so hand edits, and edits
by someone who may not signal the daemon or from another host on a shared data root, take effect
too, at the price of one ``stat`` every 2 s). A reload that fails keeps the previous catalog in
force and says why in ``Status.catalog_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tomli_w

from modeld._atomic import write_atomically
from modeld.models._aliases import KV_CACHE_TYPES, WARMUP_POLICIES, Alias

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the 3.10 fallback (pyproject pulls tomli there)
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "BACKENDS",
    "CATALOG_FILE",
    "KEYS",
    "POLL_INTERVAL_S",
    "PRECISIONS",
    "TASKS",
    "CatalogError",
    "CatalogState",
    "CatalogWatcher",
    "alias_to_table",
    "catalog_path",
    "file_signature",
    "parse_catalog",
    "read_catalog",
    "render_catalog",
    "validate_alias_name",
    "write_catalog",
]

log = logging.getLogger("modeld.catalog")

CATALOG_FILE = "models.toml"
BACKENDS = ("llama", "openvino")
TASKS = ("generate", "embed", "rerank")
PRECISIONS = ("f16", "f32", "bf16")
#: how often a daemon stats the file (seconds)
POLL_INTERVAL_S = 2.0

_ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: OpenVINO device strings: CPU, GPU.1, AUTO:GPU,CPU, HETERO:GPU,CPU ...
_DEVICE = re.compile(r"[A-Za-z][A-Za-z0-9.:,_-]{0,63}")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_END = re.compile(r"\s*\(at end of document\)$")


class CatalogError(ValueError):
    """The catalog file cannot be used: ``str(error)`` is one line, ``models.toml:LINE: why``."""

    def __init__(self, message: str, line: int = 0, file_name: str = CATALOG_FILE) -> None:
        where = f"{file_name}:{line}" if line else file_name
        super().__init__(f"{where}: {message}")
        self.line = line


# -- reading ----------------------------------------------------------------------------------


def _header_line(lines: list[str], alias: str) -> int:
    """1-based line of ``[models.<alias>]`` (bare or quoted), else of the first mention; 0."""
    quoted = re.escape(alias)
    header = re.compile(rf"^\s*\[\s*models\s*\.\s*(?:{quoted}|\"{quoted}\"|'{quoted}')\s*\]")
    for number, text in enumerate(lines, 1):
        if header.match(text):
            return number
    for number, text in enumerate(lines, 1):
        if alias in text:
            return number
    return 0


def _key_line(lines: list[str], alias: str, key: str) -> int:
    """1-based line of ``key = ...`` inside the alias's table, else the header's line."""
    start = _header_line(lines, alias)
    if not start:
        return 0
    assignment = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
    for number in range(start + 1, len(lines) + 1):
        text = lines[number - 1]
        if text.lstrip().startswith("["):
            break
        if assignment.match(text):
            return number
    return start


def _syntax_error(exc: tomllib.TOMLDecodeError, text: str, file_name: str) -> CatalogError:
    message = str(exc).splitlines()[0] if str(exc) else "not valid TOML"
    if match := _TOML_POSITION.search(message):
        body = message[: match.start()]
        return CatalogError(f"{body} (column {match[2]})", int(match[1]), file_name)
    if match := _TOML_END.search(message):
        end = text.count("\n") + 1
        return CatalogError(f"{message[: match.start()]} (at the end)", end, file_name)
    return CatalogError(message, 0, file_name)


def validate_alias_name(name: str) -> str | None:
    """Why ``name`` cannot be an alias, or None: a bare name (a path's separators or a
    ``.gguf`` ending would make a command line read it as a file)."""
    if not _ALIAS_NAME.fullmatch(name):
        return (
            f"alias {name!r} is not a bare name: up to 64 letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    if name.endswith(".gguf"):
        return f"alias {name!r} must not end in .gguf (it would name a file)"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_of(value: Any, choices: tuple[str, ...]) -> str | None:
    if not isinstance(value, str) or value not in choices:
        return f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}"
    return None


def _check_value(key: str, value: Any) -> str | None:
    """Why ``value`` is wrong for ``key``, or None."""
    if key == "model":
        if not isinstance(value, str) or not value.strip():
            return f"must be a non-empty string (a file, an IR directory or a name), not {value!r}"
    elif key == "backend":
        return _one_of(value, BACKENDS)
    elif key == "tasks":
        if not isinstance(value, list) or not value:
            return f"must be a non-empty list of {', '.join(TASKS)}, not {value!r}"
        for task in value:
            if (problem := _one_of(task, TASKS)) is not None:
                return f"entry {problem}"
        if len(set(value)) != len(value):
            return f"lists a task twice: {value!r}"
    elif key in ("n_ctx", "threads"):
        if not _is_int(value) or value < 0:
            return f"must be a whole number, 0 or more, not {value!r}"
    elif key == "n_gpu_layers":
        if not _is_int(value) or value < -1:
            return f"must be a whole number, -1 (all) or more, not {value!r}"
    elif key == "kv_cache_type":
        return _one_of(value, KV_CACHE_TYPES)
    elif key == "precision":
        return _one_of(value, PRECISIONS)
    elif key == "device":
        if not isinstance(value, str) or not _DEVICE.fullmatch(value):
            return f"must be a device such as 'CPU', 'GPU', 'NPU' or 'AUTO', not {value!r}"
    elif key == "warmup":
        return _one_of(value, WARMUP_POLICIES)
    elif key == "load_timeout_s":
        number = value if _is_int(value) or isinstance(value, float) else None
        if number is None or not math.isfinite(number) or number < 0:
            return f"must be a number of seconds, 0 or more, not {value!r}"
    elif key == "required" and not isinstance(value, bool):
        return f"must be true or false, not {value!r}"
    return None


#: every key an alias's table may hold (Alias's fields but its name and line)
KEYS = tuple(f.name for f in fields(Alias) if f.name not in ("name", "line"))


def _alias_from_table(name: str, table: Any, lines: list[str], file_name: str) -> Alias:
    header = _header_line(lines, name)
    if (problem := validate_alias_name(name)) is not None:
        raise CatalogError(problem, header, file_name)
    if not isinstance(table, dict):
        raise CatalogError(
            f"alias {name!r} must be a table ([models.{name}]), not {table!r}", header, file_name
        )
    for key, value in table.items():
        line = _key_line(lines, name, key)
        if key not in KEYS:
            raise CatalogError(
                f"[models.{name}]: unknown key {key!r} (known: {', '.join(KEYS)})", line, file_name
            )
        if (problem := _check_value(key, value)) is not None:
            raise CatalogError(f"[models.{name}] {key} {problem}", line, file_name)
    if "model" not in table:
        raise CatalogError(f'[models.{name}] needs model = "..."', header, file_name)
    if table.get("required") and table.get("warmup", "lazy") != "eager":
        raise CatalogError(
            f'[models.{name}] required = true needs warmup = "eager" (only an eager load '
            "can stop the start)",
            _key_line(lines, name, "required"),
            file_name,
        )
    values = dict(table)
    values["tasks"] = tuple(values.get("tasks", ()))
    if "load_timeout_s" in values:
        values["load_timeout_s"] = float(values["load_timeout_s"])
    return Alias(name=name, line=header, **values)


def parse_catalog(text: str, file_name: str = CATALOG_FILE) -> dict[str, Alias]:
    """The aliases ``text`` defines, by name, in the file's order.

    :raises CatalogError: the first problem found, as one line naming its line.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(exc, text, file_name) from None
    lines = text.splitlines()
    for key in document:
        if key != "models":
            number = next(
                (n for n, t in enumerate(lines, 1) if re.match(rf"^\s*\[?\s*{re.escape(key)}", t)),
                0,
            )
            raise CatalogError(
                f"unknown top-level key {key!r}: aliases are tables [models.<alias>]",
                number,
                file_name,
            )
    models = document.get("models", {})
    if not isinstance(models, dict):
        raise CatalogError("models must be a table of aliases", 1, file_name)
    return {
        name: _alias_from_table(name, table, lines, file_name) for name, table in models.items()
    }


def read_catalog(path: Path) -> dict[str, Alias]:
    """The aliases of the catalog at ``path``; none when there is no file.

    :raises CatalogError: unreadable or invalid (one line, naming the line).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CatalogError(f"cannot read: {exc.strerror or exc}", 0, path.name) from None
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CatalogError("not UTF-8 text", line, path.name) from None
    return parse_catalog(text, path.name)


# -- writing ----------------------------------------------------------------------------------


def alias_to_table(alias: Alias) -> dict[str, Any]:
    """The alias's TOML table: ``model`` and the keys that differ from their defaults."""
    defaults = Alias(name=alias.name, model=alias.model)
    table: dict[str, Any] = {}
    for key in KEYS:
        value = getattr(alias, key)
        if key == "model" or value != getattr(defaults, key):
            table[key] = list(value) if isinstance(value, tuple) else value
    return table


_PREAMBLE = (
    "# modeld's model catalog: one [models.<alias>] table per alias (see `modeld models --help`).\n"
    "# A running daemon reloads this file on SIGHUP and within 2 s of a change.\n\n"
)


def render_catalog(aliases: Mapping[str, Alias]) -> str:
    """The catalog's TOML text (tomli-w), which :func:`parse_catalog` reads back equal."""
    document = {"models": {name: alias_to_table(alias) for name, alias in aliases.items()}}
    return _PREAMBLE + tomli_w.dumps(document)


def write_catalog(path: Path, aliases: Mapping[str, Alias]) -> None:
    """Validate, then replace the file atomically (readers see the old catalog or the new).

    Comments and layout of a hand-written file are not kept: the file is rewritten whole.

    :raises CatalogError: the result would not read back (a bug) or cannot be written.
    """
    text = render_catalog(aliases)
    parse_catalog(text, path.name)  # what a daemon will read must be valid
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, text.encode())
    except OSError as exc:
        raise CatalogError(f"cannot write: {exc.strerror or exc}", 0, path.name) from None


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """(mtime_ns, size, inode) of the file, None when there is none: what changes on every
    edit, in place or by rename."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


# -- the catalog in force, and its reloads ----------------------------------------------------


class CatalogState:
    """The aliases in force (an immutable mapping, swapped whole under a lock: readers on any
    thread see the old catalog or the new), and why the last reload was refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._aliases: Mapping[str, Alias] = MappingProxyType({})
        self._error = ""
        self._signature: tuple[int, int, int] | None = None

    @property
    def aliases(self) -> Mapping[str, Alias]:
        with self._lock:
            return self._aliases

    @property
    def error(self) -> str:
        """Why the last read was refused ("" when the catalog in force is the file's)."""
        with self._lock:
            return self._error

    def get(self, name: str) -> Alias | None:
        return self.aliases.get(name)

    def reload(self, *, quiet: bool = False) -> bool:
        """Read the file again; True when the catalog in force changed.

        A file that cannot be used leaves the catalog in force as it was and records why in
        :attr:`error` (logged once per distinct problem, unless ``quiet``: a command line that
        reports it itself).
        """
        signature = file_signature(self.path)
        try:
            aliases = read_catalog(self.path)
        except CatalogError as exc:
            with self._lock:
                self._signature = signature
                said, self._error = self._error, str(exc)
            if said != str(exc) and not quiet:
                log.error("catalog not reloaded, the previous one stays in force: %s", exc)
            return False
        with self._lock:
            self._signature = signature
            self._error = ""
            changed = dict(self._aliases) != aliases
            self._aliases = MappingProxyType(aliases)
        if changed and not quiet:
            log.info("catalog %s: %d aliases (%s)", self.path, len(aliases), ", ".join(aliases))
        return changed

    def changed_on_disk(self) -> bool:
        """Whether the file's (mtime, size, inode) differ from those of the last read."""
        with self._lock:
            seen = self._signature
        return file_signature(self.path) != seen


class CatalogWatcher:
    """Reloads a :class:`CatalogState` on request (SIGHUP) or when the file changes (polled).

    ``on_change`` gets the aliases that a reload added or changed (a daemon warms the
    ``eager``/``background`` ones up); it runs on the loop and must not block.
    """

    def __init__(
        self,
        state: CatalogState,
        *,
        interval_s: float = POLL_INTERVAL_S,
        on_change: Callable[[list[Alias]], None] | None = None,
    ) -> None:
        self.state = state
        self.interval_s = interval_s
        self.on_change = on_change
        self._asked = asyncio.Event()

    def request_reload(self) -> None:
        """Loop thread (a signal handler): reload now rather than at the next poll."""
        self._asked.set()

    async def run(self) -> None:
        """Until cancelled: reload when asked or when the file changed. A failed round is
        logged and the next one runs."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._asked.wait(), self.interval_s)
            asked = self._asked.is_set()
            self._asked.clear()
            try:
                if asked or await asyncio.to_thread(self.state.changed_on_disk):
                    if asked:
                        log.info("SIGHUP: reloading the catalog %s", self.state.path)
                    before = dict(self.state.aliases)
                    if await asyncio.to_thread(self.state.reload) and self.on_change is not None:
                        after = self.state.aliases
                        self.on_change([a for n, a in after.items() if before.get(n) != a])
            except Exception:  # a bug must not end the watching
                log.exception("catalog watcher: this round failed; trying again")


def catalog_path(data_root: Path) -> Path:
    """Where a data root keeps its catalog."""
    return data_root / CATALOG_FILE
