"""The client-side commands: `lease show`, `describe`, `generate`, `status`, `embed`,
`rerank`."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

import modeldconn
from modeld._errors import ExitCode
from modeld.cli._group import cli, data_root_option, fail
from modeld.cli._lease_view import lease_as_json, lease_as_text
from modeldconn._dataroot import resolve_data_root
from modeldconn._probe import probe

__all__ = ["completion_as_json", "parse_bytes"]

#: a file an option reads (its absence is click's usage error)
_INPUT_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@cli.group()
def lease() -> None:
    """Inspect the data root's lease (offline)."""


@lease.command("show")
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="The lease's fields plus probe_state.")
def lease_show(data_root: Path | None, as_json: bool) -> None:
    """Print who holds the lease and what it proves, without dialling the daemon."""
    root = resolve_data_root(data_root)
    result = probe(data_root=root)
    click.echo(lease_as_json(result) if as_json else lease_as_text(result, str(root)))


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_bytes(text: str) -> int | None:
    """``800MB`` / ``4GiB`` / ``1024`` → bytes; None when malformed."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", text.lower())
    if match is None:
        return None
    return int(float(match[1]) * _UNITS[match[2] or ""])


def _client_orfail(data_root: Path | None) -> modeldconn.Client:
    client = modeldconn.Client(data_root=resolve_data_root(data_root))
    try:
        client._leader()
    except modeldconn.ProbeError as exc:
        fail(f"no daemon to talk to: {exc}", ExitCode.STARTUP)
    return client


@cli.command()
@click.argument("model")
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def describe(model: str, data_root: Path | None, as_json: bool) -> None:
    """Facts read from MODEL's header (a name or a path), and what fits in memory."""
    from modeld.models._describe import describe_locally

    try:
        click.echo(describe_locally(resolve_data_root(data_root), model, as_json=as_json))
    except modeldconn.RemoteError as exc:
        fail(str(exc), ExitCode.STARTUP)


@cli.command()
@click.argument("model")
@click.argument("prompt")
@data_root_option
@click.option("--max-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy.")
@click.option("--seed", type=int, default=None)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--n-ctx", type=click.IntRange(min=0), default=0, help="Context (0: default).")
@click.option(
    "--kv-cache-type",
    type=click.Choice(["f16", "q8_0", "q4_0"]),
    default=None,
    help="The session's K and V cache type (llama; default: the alias's, else f16).",
)
@click.option(
    "--chat",
    is_flag=True,
    help="Send PROMPT as a user message, rendered by the model's chat template "
    "(implied by --system, --tool, --think and --no-think).",
)
@click.option("--system", default=None, help="A system message before PROMPT (implies --chat).")
@click.option(
    "--json-schema",
    "json_schema",
    type=_INPUT_FILE,
    default=None,
    help="Output valid for the JSON Schema in FILE.",
)
@click.option("--json-object", is_flag=True, help="Output one JSON object, any object.")
@click.option("--regex", default=None, help="Output the whole of which matches RE (Rust syntax).")
@click.option(
    "--grammar", type=_INPUT_FILE, default=None, help="Output in the Lark grammar in FILE."
)
@click.option("--gbnf", type=_INPUT_FILE, default=None, help="Output in the GBNF grammar in FILE.")
@click.option(
    "--tool",
    "tool_files",
    type=_INPUT_FILE,
    multiple=True,
    help="A JSON file with a tool's name, description and parameters (a JSON Schema); "
    "or a list of them (repeatable; implies --chat).",
)
@click.option(
    "--tool-choice",
    default="",
    help="auto (default) | none | required | the name of the one tool to call.",
)
@click.option(
    "--think/--no-think",
    "think",
    default=None,
    help="The template's enable_thinking (default: the template's own; implies --chat).",
)
@click.option(
    "--thinking-budget", type=click.IntRange(min=0), default=None, help="At most N thinking tokens."
)
@click.option(
    "--logprobs",
    type=click.IntRange(0, 20),
    default=None,
    help="Each token's logprob and the top N alternatives.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: text, token_ids, stop_reason, tool_calls, thinking, "
    "logprobs, usage.",
)
def generate(
    model: str,
    prompt: str,
    data_root: Path | None,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    stop: tuple[str, ...],
    n_ctx: int,
    kv_cache_type: str | None,
    chat: bool,
    system: str | None,
    json_schema: Path | None,
    json_object: bool,
    regex: str | None,
    grammar: Path | None,
    gbnf: Path | None,
    tool_files: tuple[Path, ...],
    tool_choice: str,
    think: bool | None,
    thinking_budget: int | None,
    logprobs: int | None,
    as_json: bool,
) -> None:
    """Stream a completion of PROMPT from the running daemon.

    Without --json: the answer text on stdout (thinking on stderr, each tool call as a line
    ``[tool_call N] NAME ARGUMENTS``), then a summary (and with --logprobs, one line a token) on
    stderr. With --json: one JSON object on stdout, once the completion is done:
    {"text", "token_ids", "stop_reason", "stop_string", "tool_calls": [{"id", "name",
    "arguments", "index"}], "thinking", "logprobs": [{"id", "logprob", "piece", "top": [{"id",
    "logprob", "piece"}]}], "usage": {"prompt_tokens", "completion_tokens", "thinking_tokens",
    "reused_tokens"}} (pieces as text, invalid UTF-8 replaced).
    """
    response_format = _response_format(json_schema, json_object, regex, grammar, gbnf)
    tools = tuple(tool for path in tool_files for tool in _read_tools(path))
    if tool_choice and not tools:
        raise click.UsageError("--tool-choice needs --tool")
    if tools and response_format is not None:
        raise click.UsageError("--tool excludes --json-schema, --json-object, --regex, --grammar")
    prefix: modeldconn.Chat | str = prompt
    if chat or system is not None or tools or think is not None:
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        prefix = modeldconn.Chat(messages, tools=tools, enable_thinking=think)
    options = modeldconn.DecodeOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        stop=stop,
        response_format=response_format,
        tools=tools,
        tool_choice=tool_choice,
        thinking_budget=thinking_budget,
        logprobs=logprobs,
    )
    client = _client_orfail(data_root)
    try:
        kv_type = kv_cache_type or ""
        with client.open_session(model, n_ctx=n_ctx, kv_cache_type=kv_type) as session:
            session.ensure_prefix(prefix)
            if as_json:
                click.echo(json.dumps(completion_as_json(session.generate(options))))
                return
            _stream(session.decode(options), logprobs is not None)
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)


def _stream(chunks: Iterable[modeldconn.DecodeChunk], show_logprobs: bool) -> None:
    """Text to stdout as it comes, thinking to stderr, tool calls as lines; then the summary."""
    final = None
    tokens: list[modeldconn.TokenLogprob] = []
    for chunk in chunks:
        if chunk.thinking:
            click.echo(chunk.thinking, nl=False, err=True)
        click.echo(chunk.text, nl=False)
        for call in chunk.tool_calls:
            click.echo(f"[tool_call {call.index}] {call.name} {call.arguments}")
        tokens.extend(chunk.logprobs)
        final = chunk.final or final
    click.echo()
    if show_logprobs:
        for token in tokens:
            top = "  ".join(f"{t.text!r} {t.logprob:.3f}" for t in token.top)
            click.echo(f"{token.id:>7} {token.logprob:9.4f} {token.text!r:16} {top}", err=True)
    if final is not None:
        click.echo(
            f"[{final.completion_tokens} tokens, {final.stop_reason}, "
            f"ttft {final.ttft_ms:.0f} ms, {final.tokens_per_s:.1f} tok/s]",
            err=True,
        )


def completion_as_json(completion: modeldconn.Completion) -> dict[str, Any]:
    """What ``modeld generate --json`` prints: plain JSON types only (pieces of logprobs as
    text, invalid UTF-8 replaced by U+FFFD)."""
    final = completion.final
    return {
        "text": completion.text,
        "token_ids": list(completion.token_ids),
        "stop_reason": final.stop_reason,
        "stop_string": final.stop_string,
        "tool_calls": [
            {"id": c.id, "name": c.name, "arguments": c.arguments, "index": c.index}
            for c in completion.tool_calls
        ],
        "thinking": completion.thinking,
        "logprobs": [
            {
                "id": t.id,
                "logprob": t.logprob,
                "piece": t.text,
                "top": [{"id": a.id, "logprob": a.logprob, "piece": a.text} for a in t.top],
            }
            for t in completion.logprobs
        ],
        "usage": {
            "prompt_tokens": final.prompt_tokens,
            "completion_tokens": final.completion_tokens,
            "thinking_tokens": final.thinking_tokens,
            "reused_tokens": final.reused_tokens,
        },
    }


def _read_text(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint=option) from None


def _read_json(path: Path, option: str) -> Any:
    try:
        return json.loads(_read_text(path, option))
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{path}: not JSON: {exc}", param_hint=option) from None


def _read_tools(path: Path) -> list[modeldconn.ToolDefinition]:
    """The tool (an object) or tools (a list of objects) in ``path``: each with name,
    description and parameters, or OpenAI's {"type": "function", "function": {...}}."""
    value = _read_json(path, "--tool")
    try:
        return [
            modeldconn.ToolDefinition.of(v) for v in (value if isinstance(value, list) else [value])
        ]
    except modeldconn.InvalidArgument as exc:
        raise click.BadParameter(f"{path}: {exc.message}", param_hint="--tool") from None


def _response_format(
    json_schema: Path | None,
    json_object: bool,
    regex: str | None,
    grammar: Path | None,
    gbnf: Path | None,
) -> modeldconn.ResponseFormat | None:
    """The one output constraint asked for, or None.

    :raises click.UsageError: more than one; a schema file that is not JSON."""
    given = [
        name
        for name, value in (
            ("--json-schema", json_schema),
            ("--json-object", json_object or None),
            ("--regex", regex),
            ("--grammar", grammar),
            ("--gbnf", gbnf),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} exclude each other: give one")
    if json_schema is not None:
        _read_json(json_schema, "--json-schema")  # a typo is a usage error, not the daemon's
        return modeldconn.ResponseFormat(json_schema=_read_text(json_schema, "--json-schema"))
    if json_object:
        return modeldconn.ResponseFormat(json_object=True)
    if regex is not None:
        return modeldconn.ResponseFormat(regex=regex)
    if grammar is not None:
        return modeldconn.ResponseFormat(lark=_read_text(grammar, "--grammar"))
    if gbnf is not None:
        return modeldconn.ResponseFormat(gbnf=_read_text(gbnf, "--gbnf"))
    return None


def _advertised_http(data_root: Path | None) -> str:
    """The HTTP API's URL from the lease (the daemon advertises it there), or ""."""
    result = probe(data_root=data_root)
    return result.lease.http_endpoint if result.lease is not None else ""


@cli.command()
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the Status reply as JSON.")
def status(data_root: Path | None, as_json: bool) -> None:
    """Ask the running daemon how it is: identity, state, models, sessions."""
    client = _client_orfail(data_root)
    try:
        reply = client.status()
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)
    if as_json:
        click.echo(json.dumps(_camel_case(dataclasses.asdict(reply)), indent=2))
        return
    click.echo(f"instance   {reply.instance_id} (pid {reply.pid} on {reply.host})")
    click.echo(f"state      {reply.state}, backend {reply.backend}, up {reply.uptime_s:.0f} s")
    click.echo(f"endpoint   {reply.endpoint}")
    http_api = _advertised_http(data_root)
    if http_api:
        click.echo(f"http api   {http_api}")
    click.echo(f"version    modeld {reply.version}, protocol {reply.protocol}")
    click.echo(
        f"sessions   {reply.sessions_open} open: {reply.sessions_live} live "
        f"(at most {reply.max_live_sessions}), {reply.sessions_parked} parked "
        f"({reply.parked_ram_bytes / 2**20:.1f} MiB RAM, {reply.parked_disk_bytes / 2**20:.1f} MiB "
        f"disk; {reply.parks} parks, {reply.restores} restores)"
    )
    click.echo(
        f"embedding  {reply.embedding_contexts} contexts over "
        f"{len(reply.embedding_models)} models (apart from sessions)"
    )
    click.echo(
        f"sharing    {reply.prefix_shares} sessions started from another's KV "
        f"({reply.prefix_shared_tokens} tokens copied, not computed)"
    )
    rows = reply.decode_rows / reply.decode_calls if reply.decode_calls else 0.0
    click.echo(
        f"decode     {reply.decode_rows} tokens in {reply.decode_calls} engine calls "
        f"({rows:.2f} sessions a call)"
    )
    for loaded in reply.models:
        weights = "" if loaded.weights_loaded else ", weights unloaded"
        click.echo(
            f"model      {loaded.name} ({loaded.digest[:12]}), {loaded.sessions} sessions{weights}"
            f"; generation {loaded.generation}, {loaded.loads} loads"
            + (f" (last {loaded.last_load_s:.2f} s)" if loaded.loads else "")
        )
        if loaded.weights_loaded:
            exact = "exact" if loaded.decode_batch_exact else "NOT bit-exact: --decode-batch-rows"
            click.echo(f"           decode batches of up to {loaded.decode_batch_rows} ({exact})")
    for embedding in reply.embedding_models:
        weights = "weights in" if embedding.weights_loaded else "weights freed while idle"
        shared = ", shared with its sessions" if embedding.shares_weights else ""
        click.echo(
            f"embedding  {embedding.name} ({embedding.digest[:12]}), "
            f"{embedding.contexts} contexts, {weights}{shared}"
        )


@cli.command()
@click.argument("model")
@click.argument("texts", nargs=-1, required=True)
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--no-normalize", is_flag=True, help="Keep the raw pooled vectors.")
@click.option("--truncate", is_flag=True, help="Cut inputs longer than the model takes.")
@click.option("--pooling", type=click.Choice(["mean", "cls", "last"]), default=None)
def embed(
    model: str,
    texts: tuple[str, ...],
    data_root: Path | None,
    as_json: bool,
    no_normalize: bool,
    truncate: bool,
    pooling: str | None,
) -> None:
    """Embed each TEXT with MODEL on the running daemon.

    With --json, one object: {"embeddings": [[...], ...], "dims": N, "pooling": ...,
    "usage": {"input_tokens": [...], "total_tokens": N, "truncated_tokens": [...]}}. Without,
    one line per text: its token count and the first values of its vector.
    """
    client = _client_orfail(data_root)
    try:
        result = client.embed(
            model, list(texts), normalize=not no_normalize, truncate=truncate, pooling=pooling or ""
        )
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)
    vectors = [[float(x) for x in row] for row in result.vectors]
    if as_json:
        usage = result.usage
        document = {
            "embeddings": vectors,
            "dims": result.dims,
            "pooling": result.pooling,
            "normalized": result.normalized,
            "usage": {
                "input_tokens": list(usage.input_tokens),
                "total_tokens": usage.total_tokens,
                "truncated_tokens": list(usage.truncated_tokens),
            },
        }
        click.echo(json.dumps(document))
        return
    for text, row, tokens in zip(texts, vectors, result.usage.input_tokens, strict=True):
        head = ", ".join(f"{x:+.4f}" for x in row[:4])
        click.echo(f"[{head}, ...] {tokens} tokens  {text[:60]!r}")
    click.echo(
        f"[{result.dims} dims, {result.pooling} pooling, {result.engine_calls} engine calls]",
        err=True,
    )


def _camel_case(value: object) -> object:
    """Keys as the Status message's JSON names (``instanceId``), as scripts have read them."""
    if isinstance(value, dict):
        return {
            re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key): _camel_case(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_camel_case(item) for item in value]
    return value


@cli.command()
@click.argument("model")
@click.argument("query")
@click.argument("documents", nargs=-1, required=True)
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--top-n", type=click.IntRange(min=1), default=None, help="Order the N best only.")
@click.option("--truncate", is_flag=True, help="Cut documents longer than the model takes.")
def rerank(
    model: str,
    query: str,
    documents: tuple[str, ...],
    data_root: Path | None,
    as_json: bool,
    top_n: int | None,
    truncate: bool,
) -> None:
    """Score each DOC's relevance to QUERY with MODEL on the running daemon.

    With --json, one object: {"scores": [...], "order": [...], "method": ..., "usage":
    {"input_tokens": [...], "total_tokens": N, "truncated_tokens": [...]}}. Without, one line
    per document, best first: its index, its score and its start.
    """
    client = _client_orfail(data_root)
    try:
        result = client.rerank(model, query, list(documents), top_n=top_n, truncate=truncate)
    except modeldconn.ModeldError as exc:
        fail(str(exc), ExitCode.STARTUP)
    if as_json:
        usage = result.usage
        document = {
            "scores": list(result.scores),
            "order": list(result.order),
            "method": result.method,
            "usage": {
                "input_tokens": list(usage.input_tokens),
                "total_tokens": usage.total_tokens,
                "truncated_tokens": list(usage.truncated_tokens),
            },
        }
        click.echo(json.dumps(document))
        return
    for i in result.order:
        click.echo(f"{i:>3}  {result.scores[i]:+.4f}  {documents[i][:60]!r}")
    click.echo(f"[{result.method}, {result.usage.total_tokens} tokens]", err=True)
