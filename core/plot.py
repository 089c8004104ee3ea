"""pruning.svg: what a search did, at a glance. Plain SVG text, no plotting library.

Left: calibration PPL after each removal step (step 0 is the unpruned model).
Right: a layer map, one column per layer, MHA row on top and MLP row below; removed blocks
are filled, labelled with the step that removed them.
"""

from __future__ import annotations

from html import escape

W, H, PAD = 900, 260, 40
CURVE_W = 330
ACCENT, MUTED = "#d9480f", "#adb5bd"


def pruning_svg(pruning: dict) -> str:
    ppls = [pruning["base_ppl"]] + [r["ppl"] for r in pruning["removed"]]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        *_ppl_curve(ppls),
        *_layer_map(pruning["num_layers_before"], pruning["removed"]),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def _ppl_curve(ppls: list[float]) -> list[str]:
    x0, y0, w, h = PAD + 10, PAD, CURVE_W - PAD, H - 2 * PAD
    lo, hi = min(ppls), max(ppls)
    span = (hi - lo) or 1.0

    def xy(i: int, p: float) -> tuple[float, float]:
        x = x0 + (w * i / max(1, len(ppls) - 1))
        return x, y0 + h - h * (p - lo) / span

    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, p) for i, p in enumerate(ppls)))
    out = [
        f'<text x="{x0}" y="{y0 - 14}" font-weight="bold">Calibration PPL after each step</text>',
        f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="{MUTED}"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + h}" stroke="{MUTED}"/>',
        f'<text x="{x0 - 4}" y="{y0 + 4}" text-anchor="end">{hi:.2f}</text>',
        f'<text x="{x0 - 4}" y="{y0 + h}" text-anchor="end">{lo:.2f}</text>',
        f'<text x="{x0 + w / 2}" y="{y0 + h + 26}" text-anchor="middle">blocks removed</text>',
        f'<polyline points="{points}" fill="none" stroke="{ACCENT}" stroke-width="2"/>',
    ]
    for i, p in enumerate(ppls):
        x, y = xy(i, p)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{ACCENT}"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + h + 13}" text-anchor="middle">{i}</text>')
    return out


def _layer_map(num_layers: int, removed: list[dict]) -> list[str]:
    x0, y0 = CURVE_W + 2 * PAD, PAD + 40
    cell = min(24.0, (W - x0 - PAD) / max(1, num_layers))
    step_of = {(r["block"], r["layer"]): n for n, r in enumerate(removed, 1)}
    title = "Removed blocks (step that removed them)"
    out = [f'<text x="{x0}" y="{PAD - 14}" font-weight="bold">{title}</text>']
    for row, kind in enumerate(("mha", "mlp")):
        y = y0 + row * (cell + 6)
        out.append(f'<text x="{x0 - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{kind}</text>')
        for layer in range(num_layers):
            x = x0 + layer * cell
            step = step_of.get((kind, layer))
            fill = ACCENT if step else "#f1f3f5"
            tip = f"{escape(kind)}.{layer}" + (f" removed at step {step}" if step else "")
            out.append(
                f'<rect x="{x:.1f}" y="{y}" width="{cell - 2:.1f}" height="{cell}" fill="{fill}">'
                f"<title>{tip}</title></rect>"
            )
            if step and cell >= 14:
                out.append(
                    f'<text x="{x + (cell - 2) / 2:.1f}" y="{y + cell / 2 + 4}" fill="white" '
                    f'text-anchor="middle" font-size="9">{step}</text>'
                )
    y_axis = y0 + 2 * (cell + 6) + 12
    for layer in range(0, num_layers, 5):
        x = x0 + layer * cell + cell / 2
        out.append(f'<text x="{x:.1f}" y="{y_axis}" text-anchor="middle">{layer}</text>')
    out.append(f'<text x="{x0}" y="{y_axis + 16}">layer</text>')
    return out


# Series colours of grouped bars: the first series (the base model) muted, the rest distinct.
SERIES = ("#868e96", ACCENT, "#1c7ed6", "#2f9e44", "#ae3ec9", "#f59f00", "#0c8599")


def grouped_bars_svg(title: str, groups: list[tuple[str, dict[str, float], str]]) -> str:
    """Horizontal bars, one group per measure (`(label, {series: value}, format)`), one bar per
    series, each group scaled to its own largest value and every bar labelled with its value:
    measures of different units side by side, and how each series compares within one."""
    series = list(dict.fromkeys(name for _, values, _ in groups for name in values))
    # The labels' column as wide as the longest label needs (about 6 px a character at 11 px).
    longest = max((len(label) for label, _, _ in groups), default=10)
    bar, gap, width = 14, 14, 900
    label_w = int(min(width / 2, PAD / 2 + 8 + 6.2 * longest))
    legend_y = PAD
    height = int(legend_y + 24 + sum(len(v) * bar + gap for _, v, _ in groups) + PAD / 2)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{PAD / 2}" y="{PAD / 2 + 4}" font-weight="bold">{escape(title)}</text>',
    ]
    for k, name in enumerate(series):
        x = PAD / 2 + k * 150
        colour = SERIES[k % len(SERIES)]
        out.append(f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="{legend_y}">{escape(name)}</text>')
    y = legend_y + 24.0
    span = width - label_w - PAD - 70
    for label, values, fmt in groups:
        top = max((v for v in values.values() if v > 0), default=1.0)
        out.append(
            f'<text x="{label_w - 8}" y="{y + len(values) * bar / 2 + 4}" '
            f'text-anchor="end">{escape(label)}</text>'
        )
        for name, value in values.items():
            colour = SERIES[series.index(name) % len(SERIES)]
            w = max(1.0, span * value / top) if value > 0 else 1.0
            out.append(
                f'<rect x="{label_w}" y="{y:.1f}" width="{w:.1f}" height="{bar - 2}" '
                f'fill="{colour}"><title>{escape(name)}: {format(value, fmt)}</title></rect>'
            )
            out.append(
                f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 4:.1f}">{format(value, fmt)}</text>'
            )
            y += bar
        y += gap
    out.append("</svg>")
    return "\n".join(out) + "\n"
