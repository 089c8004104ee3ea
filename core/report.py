"""An evaluation report (core.evaluation.run) as text and as a picture: the table that
`blockprune eval` prints and the model card shows, and evaluation.svg. Formatting only."""

from __future__ import annotations

from typing import Any

from core.plot import grouped_bars_svg

REPORT_FILE, REPORT_PLOT = "report.json", "evaluation.svg"  # in an export, beside pruning.json


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Right-aligned columns; the first row is the header, underlined."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The report as rows of text: a header (measure, then one column per variant), then one row
    per measure. What `blockprune eval` prints and the model card shows."""
    names = report["variants"]
    rows: list[tuple[str, ...]] = [("measure", *names)]
    rows.append(("parameters", *(f"{report['params'][n]:,}" for n in names)))
    for source, entry in report["perplexity"].items():
        rows.append((f"ppl {source}", *(f"{entry[n]:.3f}" for n in names)))
    for task, entry in report["tasks"].items():
        metric = "acc_norm" if "acc_norm" in entry[names[0]] else "acc"
        rows.append((f"{task} {metric}", *(f"{entry[n][metric]:.4f}" for n in names)))
    speed = report.get("speed")
    if speed:
        rows.append(("prefill tok/s", *(f"{speed[n]['prefill_tokens_per_s']:.1f}" for n in names)))
        rows.append(("decode tok/s", *(f"{speed[n]['decode_tokens_per_s']:.1f}" for n in names)))
        rows.append(
            ("peak memory MiB", *(f"{speed[n]['peak_memory_bytes'] / 2**20:.1f}" for n in names))
        )
    return rows


def report_svg(report: dict[str, Any]) -> str:
    """evaluation.svg: every measure of the report, the variants' bars side by side."""
    names = report["variants"]
    groups: list[tuple[str, dict[str, float], str]] = [
        ("parameters (M)", {n: report["params"][n] / 1e6 for n in names}, ".1f")
    ]
    for source, entry in report["perplexity"].items():
        groups.append((f"ppl {source} (lower is better)", {n: entry[n] for n in names}, ".3f"))
    for task, entry in report["tasks"].items():
        metric = "acc_norm" if "acc_norm" in entry[names[0]] else "acc"
        groups.append((f"{task} {metric}", {n: entry[n][metric] for n in names}, ".4f"))
    speed = report.get("speed")
    if speed:
        for key, label in (
            ("prefill_tokens_per_s", "prefill tokens/s"),
            ("decode_tokens_per_s", "decode tokens/s"),
        ):
            groups.append((label, {n: speed[n][key] for n in names}, ".1f"))
        memory = {n: speed[n]["peak_memory_bytes"] / 2**20 for n in names}
        groups.append(("peak memory MiB (lower is better)", memory, ".1f"))
    return grouped_bars_svg("Before and after pruning", groups)
