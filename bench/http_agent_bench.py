"""An agent loop through the official openai SDK: modeld's HTTP API against llama-server's
``/v1/chat/completions``, side by side in one run, on the same GGUF and thread count.

    .venv/bin/python bench/http_agent_bench.py [--turns 10] [--system-tokens 1500] [--reps 3]
    .venv/bin/python bench/http_agent_bench.py --smoke            # 2 turns, a short prompt
    LLAMA_SERVER=/path/to/llama-server .venv/bin/python bench/http_agent_bench.py ...

Systems (started and stopped here, loopback ports, ``--threads`` each):
  modeld               ``modeld serve --http-listen``; the client names no session (implicit
                       binding by prefix, as every agent tool sends its requests)
  llama-server         llama.cpp's server with its defaults (slots, context, SWA cache; its
                       ``cache_prompt`` default is on)
  llama-server-swa     the same with ``--swa-full`` and ``cache_prompt: true`` in every request
Workloads (every request streamed, ``max_tokens`` 32, temperature 0):
  agent       one conversation: a system prompt of ~``--system-tokens`` with tool definitions,
              then ``--turns`` turns, each appending the agent's tool call and the tool's result
              and asking again
  cache-bust  the same loop with a timestamp line near the top of the system prompt, new every
              turn: what each system prefills again (modeld: prompt - x-modeld-reused-tokens,
              and where x-modeld-divergence says the prompt left the cache; llama-server: its
              response's ``timings.prompt_n``) and its TTFT
  many        4 conversations (the same system prompt, other tasks) interleaved turn by turn
              through one endpoint
The conversation is scripted (the assistant turns are fixed tool calls, not each system's own
output), so every system is sent exactly the same messages and renders the same prompt with the
GGUF's chat template; the prompt token counts the systems report are compared turn by turn.
Every workload's system prompt carries the workload's and rep's name in its first line, so each
starts cold everywhere. Output: a table of medians and ratios (modeld / peer) on stdout, JSON and
a PNG plot of TTFT per turn under bench/results/ (http_agent.*; --smoke: http_agent-smoke.*).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import openai
from engine_loop import cpu_has_amx
from harness import RESULTS
from peers import Modeld, System, _answers, _wait, free_port
from peers_bench import gemma_file, llama_server_binary

from modeld.models._catalog import PACKAGED_MODELS

SYSTEMS = ("modeld", "llama-server", "llama-server-swa")
MAX_TOKENS = 32
CONVERSATIONS = 4

TOOLS: list[dict[str, Any]] = [
    {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {p: {"type": "string", "description": d} for p, d in params.items()},
            "required": list(params),
        },
    }
    for name, description, params in [
        ("read_file", "Read a file of the repository", {"path": "the file, from the root"}),
        (
            "write_file",
            "Replace a file's content",
            {"path": "the file, from the root", "content": "its new content"},
        ),
        (
            "edit_file",
            "Replace one exact string in a file",
            {"path": "the file", "old": "the exact text", "new": "what replaces it"},
        ),
        ("list_dir", "List a directory", {"path": "the directory, from the root"}),
        ("search", "Search the repository for a regular expression", {"pattern": "the regex"}),
        ("run_tests", "Run the test suite or one test", {"target": "a test id, or empty"}),
        ("run_command", "Run a shell command in the repository", {"command": "the command"}),
        ("git_diff", "Show the working tree's diff", {"path": "a path, or empty"}),
    ]
]
RULES = [
    "Think about what the user asked before you act, and act in small steps.",
    "Call exactly one tool per turn, as <tool_call>{json}</tool_call>, and wait for its result.",
    "Never invent a file's content: read it first, then edit the exact text you read.",
    "Keep the repository's style: its naming, its formatting, its error handling.",
    "Run the tests after every change and read their output before the next step.",
    "When a test fails, find the cause in the code, not in the test, unless the test is wrong.",
    "Do not touch files unrelated to the task. Do not reformat code you did not change.",
    "When the task is done, say so in one sentence and summarise the change.",
]
FILE_TEXT = (
    "def parse_header(line: str) -> tuple[str, str]:\n"
    "    name, sep, value = line.partition(':')\n"
    "    if not sep:\n"
    "        raise ValueError(f'not a header: {line!r}')\n"
    "    return name.strip().lower(), value.strip()\n"
)
TASKS = [
    "The test test_parse_header_folded fails. Find out why and fix it.",
    "Add a --verbose flag to the CLI that prints every header it parses.",
    "Rename parse_header to read_header everywhere, tests included.",
    "The search command is slow on large repositories. Profile it and speed it up.",
]


def system_prompt(tag: str, target_tokens: int, count: Callable[[str], int], stamp: str) -> str:
    """The agent's system prompt, ``tag`` on its first line and ``stamp`` (a date line, or "")
    on its second, grown with rules to ~``target_tokens`` tokens."""
    head = f"You are Forge, a coding agent working in a git repository ({tag}).\n"
    if stamp:
        head += f"{stamp}\n"
    tools = "# Tools\n" + "\n".join(json.dumps(tool) for tool in TOOLS) + "\n"
    rules = "# Rules\n"
    n = 0
    while True:
        text = head + tools + rules
        if count(text) >= target_tokens or n > 400:
            return text
        rules += f"{n + 1}. {RULES[n % len(RULES)]}\n"
        n += 1


def tool_call(turn: int) -> str:
    call = {"name": TOOLS[turn % len(TOOLS)]["name"], "arguments": {"path": f"src/h{turn}.py"}}
    return f"<tool_call>{json.dumps(call)}</tool_call>"


def _stamp(busting: bool, rep: int, turn: int) -> str:
    """The cache-bust workload's date line: new every turn and rep."""
    if not busting:
        return ""
    return f"Current time: 2025-06-0{1 + rep % 9}T10:{turn:02d}:00Z"


def tool_result(turn: int) -> str:
    name = TOOLS[turn % len(TOOLS)]["name"]
    return f'<tool_result name="{name}">\n{FILE_TEXT}</tool_result>\nContinue with the next step.'


@dataclass
class Request:
    """One streamed request as the client saw it, and what the system said it computed."""

    system: str
    workload: str
    rep: int
    conversation: int
    turn: int
    ttft_s: float  #: request sent to the first streamed token
    total_s: float  #: request sent to the stream's end
    prompt_tokens: int
    #: prompt tokens computed again (None: the system does not say)
    prefilled: int | None = None
    divergence: str = ""  #: modeld's x-modeld-divergence header


class ChatSystem:
    """A system behind an OpenAI ``/v1`` base URL."""

    name: str
    base_url: str
    extra_body: dict[str, Any]
    server: System

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=600)

    def close(self) -> None:
        self.server.close()


def packaged_name(model: Path) -> str:
    """The packaged model ``model`` is the file of ("": none): modeld serves it under that name,
    with the chat template its GGUF lacks, which llama-server is then given too."""
    return next((n for n, p in PACKAGED_MODELS.items() if p.file_name == model.name), "")


class ModeldHttp(ChatSystem):
    def __init__(self, model: Path, threads: int) -> None:
        port = free_port()
        # the HTTP API's sessions are new sessions on the daemon's default n_ctx; its live
        # contexts: one per conversation of the many-conversations workload
        self.server = Modeld(
            model,
            threads,
            0,
            CONVERSATIONS,
            extra=("--http-listen", f"127.0.0.1:{port}"),
            name=packaged_name(model),
        )
        self.name = "modeld"
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.model = self.server.model
        self.extra_body = {}

    def count(self, text: str) -> int:
        assert isinstance(self.server, Modeld)
        return len(self.server.client.tokenize(self.model, text, add_special=False))


class LlamaServerHttp(ChatSystem, System):
    """llama-server with its defaults (but ``threads``), and ``--swa-full`` if asked."""

    def __init__(self, binary: str, model: Path, threads: int, swa_full: bool) -> None:
        self.port = free_port()
        template: list[str] = []
        packaged = packaged_name(model)
        if packaged:  # the template modeld renders with (the GGUF has none: chatml otherwise)
            self.template = tempfile.NamedTemporaryFile("w", suffix=".jinja")  # noqa: SIM115
            self.template.write(PACKAGED_MODELS[packaged].chat_template)
            self.template.flush()
            template = ["--chat-template-file", self.template.name]
        self.name = "llama-server-swa" if swa_full else "llama-server"
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.extra_body = {"cache_prompt": True} if swa_full else {}
        self.proc = subprocess.Popen(
            [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
             "-t", str(threads), "-tb", str(threads), "--no-webui", *template,
             *(["--swa-full"] if swa_full else []),
             *(["--no-repack"] if cpu_has_amx() else [])],  # weights placed as modeld does
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.server = self
        _wait(self.name, lambda: _answers(self.port, "/health"), self.proc)

    def close(self) -> None:
        System.close(self)


def stream_turn(
    system: ChatSystem, client: openai.OpenAI, model: str, messages: list[dict[str, str]]
) -> tuple[float, float, int, int | None, str]:
    """(ttft, total, prompt tokens, prefilled, divergence header) of one streamed request."""
    t0 = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
        model=model,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=system.extra_body,
    )
    first = 0.0
    usage: Any = None
    extras: dict[str, Any] = {}
    for chunk in raw.parse():
        if chunk.choices and not first:
            delta = chunk.choices[0].delta
            if delta.content or delta.tool_calls or chunk.choices[0].finish_reason:
                first = time.perf_counter() - t0
        if chunk.usage is not None:
            usage = chunk.usage
        extras.update(chunk.model_extra or {})
    total = time.perf_counter() - t0
    prompt = int(usage.prompt_tokens) if usage is not None else 0
    prefilled: int | None = None
    if "timings" in extras:  # llama-server: what this request computed of the prompt
        prefilled = int(extras["timings"].get("prompt_n", 0))
    elif raw.headers.get("x-modeld-reused-tokens") is not None:
        prefilled = prompt - int(raw.headers["x-modeld-reused-tokens"])
    return first or total, total, prompt, prefilled, raw.headers.get("x-modeld-divergence", "")


class Bench:
    def __init__(self, systems: list[ChatSystem], model: str, args: argparse.Namespace) -> None:
        self.systems = systems
        self.model = model
        self.turns: int = args.turns
        self.system_tokens: int = args.system_tokens
        counter = next(s for s in systems if isinstance(s, ModeldHttp))
        self.count = counter.count
        self.requests: list[Request] = []

    def _conversation(self, tag: str, task: str, stamp: Callable[[int], str]) -> list[Any]:
        """The messages of each turn (a fresh list per turn: the cache-bust prompt changes)."""
        turns = []
        history: list[dict[str, str]] = [{"role": "user", "content": task}]
        for turn in range(self.turns):
            system = system_prompt(tag, self.system_tokens, self.count, stamp(turn))
            turns.append([{"role": "system", "content": system}, *history])
            history += [
                {"role": "assistant", "content": tool_call(turn)},
                {"role": "user", "content": tool_result(turn)},
            ]
        return turns

    def run(self, workload: str, rep: int) -> None:
        conversations = CONVERSATIONS if workload == "many" else 1
        for system in self.systems:
            # cold at every rep; the same for every system (each is a process of its own)
            tag = f"{workload} run {rep}"
            stamp = functools.partial(_stamp, workload == "cache-bust", rep)
            plans = [
                self._conversation(tag, TASKS[c % len(TASKS)], stamp) for c in range(conversations)
            ]
            with system.client() as client:
                for turn in range(self.turns):
                    for c, plan in enumerate(plans):  # interleaved: turn by turn
                        ttft, total, prompt, prefilled, divergence = stream_turn(
                            system, client, self.model, plan[turn]
                        )
                        request = Request(system.name, workload, rep, c, turn, ttft, total, prompt)
                        request.prefilled, request.divergence = prefilled, divergence
                        self.requests.append(request)

    def warm_up(self) -> None:
        for system in self.systems:
            with system.client() as client:
                stream_turn(system, client, self.model, [{"role": "user", "content": "Hello"}])


def summarise(requests: list[Request], systems: list[str]) -> dict[str, Any]:
    """Per workload and system: medians over reps of total time, TTFT and prefilled tokens;
    ratios modeld / system; TTFT per turn (median over reps, conversations in order)."""
    out: dict[str, Any] = {}
    for workload in dict.fromkeys(r.workload for r in requests):
        entry: dict[str, Any] = {}
        for system in systems:
            mine = [r for r in requests if r.workload == workload and r.system == system]
            if not mine:
                continue
            reps = sorted({r.rep for r in mine})
            totals = [sum(r.total_s for r in mine if r.rep == rep) for rep in reps]
            per_turn: dict[tuple[int, int], list[float]] = {}
            for r in mine:
                per_turn.setdefault((r.turn, r.conversation), []).append(r.ttft_s * 1000)
            prefilled = [r.prefilled for r in mine if r.prefilled is not None]
            first_rep = sorted(
                (r for r in mine if r.rep == reps[0]), key=lambda r: (r.turn, r.conversation)
            )
            entry[system] = {
                "total_s": statistics.median(totals),
                "ttft_ms": statistics.median(r.ttft_s * 1000 for r in mine),
                "prefilled_tokens": statistics.median(prefilled) if prefilled else None,
                "prompt_tokens_last": max(r.prompt_tokens for r in mine),
                "ttft_ms_per_turn": [statistics.median(v) for _, v in sorted(per_turn.items())],
                "prefilled_per_turn": [r.prefilled for r in first_rep],
            }
            if system == "modeld":
                entry[system]["divergence_per_turn"] = [r.divergence for r in first_rep]
        if "modeld" in entry:
            for system, row in entry.items():
                if system != "modeld":
                    row["modeld_total_ratio"] = entry["modeld"]["total_s"] / row["total_s"]
                    row["modeld_ttft_ratio"] = entry["modeld"]["ttft_ms"] / row["ttft_ms"]
        entry["prompt_tokens_agree"] = _prompts_agree(requests, workload, systems)
        out[workload] = entry
    return out


def _prompts_agree(requests: list[Request], workload: str, systems: list[str]) -> str:
    """How many requests every system counted the same prompt tokens for (same rendering)."""
    counts: dict[tuple[int, int, int], set[int]] = {}
    for r in requests:
        if r.workload == workload and r.system in systems:
            counts.setdefault((r.rep, r.conversation, r.turn), set()).add(r.prompt_tokens)
    return f"{sum(len(v) == 1 for v in counts.values())}/{len(counts)}"


def table(summary: dict[str, Any], systems: list[str]) -> str:
    lines = [
        "| workload | system | total s | TTFT ms (median) | prefilled tok (median) | "
        "modeld/system total | modeld/system TTFT |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, entry in summary.items():
        for system in systems:
            row = entry.get(system)
            if row is None:
                continue
            pre = row["prefilled_tokens"]
            total_ratio = row.get("modeld_total_ratio", 1.0)
            ttft_ratio = row.get("modeld_ttft_ratio", 1.0)
            lines.append(
                f"| {workload} | {system} | {row['total_s']:.2f} | {row['ttft_ms']:.0f} | "
                f"{'n/a' if pre is None else f'{pre:.0f}'} | {total_ratio:.2f} | {ttft_ratio:.2f} |"
            )
        lines.append(f"| {workload} | prompts equal | {entry['prompt_tokens_agree']} | | | | |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], systems: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 4), squeeze=False)
    for ax, (workload, entry) in zip(axes[0], summary.items(), strict=True):
        for system in systems:
            if system in entry:
                values = entry[system]["ttft_ms_per_turn"]
                ax.plot(range(1, len(values) + 1), values, marker="o", label=system)
        ax.set_title(workload)
        ax.set_xlabel("request (many: conversations interleaved)" if workload == "many" else "turn")
        ax.set_ylabel("TTFT, ms")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def start(names: list[str], model: Path, threads: int, binary: str | None) -> list[ChatSystem]:
    systems: list[ChatSystem] = [ModeldHttp(model, threads)]
    try:
        for name in names:
            if name in ("llama-server", "llama-server-swa"):
                assert binary is not None
                systems.append(LlamaServerHttp(binary, model, threads, name == "llama-server-swa"))
    except BaseException:
        for system in systems:
            system.close()
        raise
    return systems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--system-tokens", type=int, default=1500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workloads", default="agent,cache-bust,many")
    parser.add_argument("--llama-server", default=None, help="default: $LLAMA_SERVER, else PyPI")
    parser.add_argument("--model-file", type=Path, default=None, help="default: Gemma 3 270M")
    parser.add_argument("--smoke", action="store_true", help="2 turns, ~300-token prompt, 1 rep")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.smoke:
        args.turns, args.system_tokens, args.reps = 2, 300, 1
    names = [n for n in args.systems.split(",") if n and n != "modeld"]
    binary = None
    if names:
        binary = args.llama_server or llama_server_binary()
    model = args.model_file or gemma_file()
    systems = start(names, model, args.threads, binary)
    modeld = systems[0]
    assert isinstance(modeld, ModeldHttp)
    bench = Bench(systems, modeld.model, args)
    started = time.perf_counter()
    try:
        bench.warm_up()
        for workload in args.workloads.split(","):
            for rep in range(args.reps):
                bench.run(workload, rep)
    finally:
        for system in systems:
            system.close()
    order = [s.name for s in systems]
    summary = summarise(bench.requests, order)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": model.name,
        "threads": args.threads,
        "turns": args.turns,
        "system_tokens": args.system_tokens,
        "max_tokens": MAX_TOKENS,
        "reps": args.reps,
        "systems": order,
        "seconds": round(time.perf_counter() - started, 1),
        "workloads": summary,
        "requests": [asdict(r) for r in bench.requests],
        "command": "python bench/http_agent_bench.py " + " ".join(sys.argv[1:]),
    }
    stem = "http_agent-smoke" if args.smoke else "http_agent"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    title = f"{model.name}, {args.threads} threads, {args.turns} turns, median of {args.reps}"
    plot(summary, order, args.out / f"{stem}.png", title)
    print(table(summary, order))
    for workload, entry in summary.items():
        if "modeld" in entry and workload == "cache-bust":
            print(f"{workload}, modeld x-modeld-divergence per turn:")
            for header in entry["modeld"]["divergence_per_turn"]:
                print(f"  {urllib.parse.unquote(header)}")
        for name in order:
            if name in entry:
                per_turn = entry[name]["prefilled_per_turn"]
                print(f"{workload}, {name}: prefilled per request {per_turn}")
    print(f"wrote {args.out / f'{stem}.json'} and .png")


if __name__ == "__main__":
    main()
