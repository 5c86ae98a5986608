"""Markdown table and PNG plot of a peers_bench.py result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNITS = {
    "ttft_ms": "TTFT, ms",
    "decode_tok_s": "decode tok/s per stream",
    "aggregate_tok_s": "aggregate tok/s",
    "conversation_s": "whole conversation, s",
    "total_s": "all turns, s",
}
LOWER_IS_BETTER = {"ttft_ms", "conversation_s", "total_s"}


def _cell(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "n/a"
    text = f"{stats['median']:.1f} ({stats['min']:.1f}-{stats['max']:.1f})"
    if "ratio_vs_modeld" in stats:
        text += f" x{stats['ratio_vs_modeld']:.2f}"
    return text


def markdown(result: dict[str, Any]) -> str:
    systems: list[str] = result["systems"]
    lines = [
        f"Machine: {result['machine']}; model {result['model']}; {result['threads']} threads; "
        f"{result['reps']} reps; run took {result['seconds']} s.",
        f"Command: `{result['command']}`",
        "",
        "Cells: median (min-max over reps) and xratio against modeld, pair by pair "
        "(for TTFT and times lower is better; for tok/s higher is better).",
        "",
        "| workload | metric | " + " | ".join(systems) + " |",
        "|---|---|" + "---|" * len(systems),
    ]
    for workload, entry in result["workloads"].items():
        for metric, unit in UNITS.items():
            row = entry.get(metric)
            if row:
                cells = " | ".join(_cell(row.get(name)) for name in systems)
                lines.append(f"| {workload} | {unit} | {cells} |")
        reused = entry.get("reused_median", {})
        if reused:
            cells = " | ".join(str(reused.get(n, "—")) for n in systems)
            lines.append(f"| {workload} | reused tokens (as reported) | {cells} |")
        agree = entry.get("greedy_equal_to_modeld", {})
        if agree:
            cells = " | ".join("ref" if n == "modeld" else agree.get(n, "—") for n in systems)
            lines.append(f"| {workload} | greedy output = modeld's | {cells} |")
        failures = entry.get("failures", {})
        if failures:
            cells = " | ".join(str(len(failures.get(n, []))) for n in systems)
            lines.append(f"| {workload} | **failed turns** | {cells} |")
    rss = result["peak_rss_mib"]
    lines.append(
        "| all | peak RSS, MiB | " + " | ".join(str(rss.get(n, "—")) for n in systems) + " |"
    )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems: list[str] = result["systems"]
    workloads = result["workloads"]
    panels = [
        ("ttft_ms", "TTFT, ms (log; lower is better)", True),
        ("decode_tok_s", "decode tok/s per stream (higher is better)", False),
        ("aggregate_tok_s", "W5 aggregate tok/s (higher is better)", False),
    ]
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 11))
    for axis, (metric, title, log) in zip(axes, panels, strict=True):
        names = [w for w, entry in workloads.items() if entry.get(metric)]
        width = 0.8 / max(1, len(systems))
        for k, system in enumerate(systems):
            values = [(workloads[w][metric].get(system) or {}).get("median", 0.0) for w in names]
            axis.bar([i + k * width for i in range(len(names))], values, width, label=system)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
        axis.set_xticklabels(names, fontsize=8)
        axis.set_title(title, fontsize=10)
        if log:
            axis.set_yscale("log")
        axis.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=len(systems))
    figure.suptitle(f"modeld vs peers — {result['model']}, {result['machine']}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def write_reports(result: dict[str, Any], md_path: Path, png_path: Path) -> None:
    md_path.write_text(markdown(result))
    plot(result, png_path)
