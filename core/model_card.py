"""The README.md model card of an export, rendered from its pruning.json record."""

from __future__ import annotations

import json

from contract.methods import METHOD_TRAITS


def _base_name(pruning: dict) -> str | None:
    base = pruning.get("base_model") or {}
    name = base.get("model") or base.get("name") or base.get("repo_id")
    return str(name) if name else None


def _citation(method: str) -> str:
    traits = METHOD_TRAITS.get(method)
    return traits.citation if traits is not None else method


def _racing_note(search: dict | None) -> list[str]:
    """How a racing search chose (its PPLs are still on every calibration sequence)."""
    if not search or search.get("mode") != "racing":
        return []
    stages = "/".join(str(n) for n in search["stage_sequences"])
    note = (
        f"Searched by racing: candidates scored on {stages} sequences in stages, those that "
        f"could not win dropped at a margin of {search['margin']} standard errors; each PPL "
        "above is on every calibration sequence."
    )
    if "disagreements" in search:
        note += (
            f" Checked against the exact search: {len(search['disagreements'])} of "
            f"{search['verified']} picks differ."
        )
    return ["", note]


def _healing_note(healing: dict | None) -> list[str]:
    """What training-free healing changed in the weights."""
    if not healing:
        return []
    into = ", ".join(f"`{s['into']}`" for s in healing["spans"])
    return [
        "",
        f"Healed without training: for each run of removed blocks, a least-squares linear map "
        f"(fitted on the calibration text) is folded into the output projection of the block "
        f"before it ({into}). The calibration perplexities above are before healing.",
    ]


def render_model_card(pruning: dict, weights_dir: str, evaluation: dict | None = None) -> str:
    """A short card: base model, removed blocks, perplexity and size before/after, the
    evaluation's table when there is one, how to load."""
    base = _base_name(pruning)
    removed = pruning["removed"]
    before, after = pruning["params_before"], pruning["params_after"]
    layers_before, layers_after = pruning["num_layers_before"], len(pruning["kept_layers"])
    front = ["---", "library_name: transformers", "tags:", "- blockprune", "- pruned"]
    if base:
        front.append(f"base_model: {json.dumps(base)}")  # a JSON string is a valid YAML scalar
    front.append("---")
    title = f"# {base} (block-pruned)" if base else "# Block-pruned model"
    rows = [
        f"| {n} | {r['block']} | {r['layer']} | {r['ppl']:.4f} |" for n, r in enumerate(removed, 1)
    ]
    lines = [
        *front,
        "",
        title,
        "",
        f"Pruned with BlockPrune {pruning['engine_version']} "
        f"({_citation(pruning.get('method', 'blockpruner'))}): "
        f"{len(removed)} of {2 * layers_before} residual blocks removed "
        f"(`mha` = self-attention, `mlp` = feed-forward); "
        f"{layers_before - layers_after} layers lost both blocks and were dropped.",
        "",
        "| | Before | After |",
        "|---|---|---|",
        f"| Parameters | {before:,} | {after:,} ({100 * (before - after) / before:.1f}% fewer) |",
        f"| Calibration perplexity | {pruning['base_ppl']:.4f} | {pruning['final_ppl']:.4f} |",
        f"| Layers | {layers_before} | {layers_after} |",
        "",
        *_evaluation_section(evaluation),
        "## Removed blocks, in removal order",
        "",
        "![PPL after each step and the removed blocks by layer](pruning.svg)",
        "",
        "| # | Block | Layer | Perplexity after removing it |",
        "|---|---|---|---|",
        *(rows or ["| - | none | - | - |"]),
        "",
        f"Calibration: `{json.dumps(pruning['calibration'], sort_keys=True)}`, "
        f"seed {pruning['seed']}. Exported layer j is original layer `kept_layers[j]` "
        "in `pruning.json`, which holds this whole record.",
        *_racing_note(pruning.get("search")),
        *_healing_note(pruning.get("healing")),
        "",
        "## Loading",
        "",
        *_loading_note(pruning, weights_dir),
        "With BlockPrune installed, without running any code from this directory:",
        "",
        "```python",
        "from core.export import load_pruned",
        "",
        f'model = load_pruned("{weights_dir}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _loading_note(pruning: dict, weights_dir: str) -> list[str]:
    """How transformers loads it: a plain export (whole layers removed) as its own architecture,
    the general one through the modeling code it ships."""
    if pruning.get("layout") == "plain":
        how = (
            f"Only whole layers were removed, so this is a plain `{pruning['base_model_type']}` "
            "model with fewer layers: transformers, and every tool that reads that "
            "architecture, loads it without remote code:"
        )
        call = f'model = AutoModelForCausalLM.from_pretrained("{weights_dir}")'
    else:
        how = "With transformers, running the modeling code shipped in this directory:"
        call = (
            f'model = AutoModelForCausalLM.from_pretrained("{weights_dir}", trust_remote_code=True)'
        )
    return [
        how,
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "",
        call,
        "```",
        "",
    ]


def _evaluation_section(report: dict | None) -> list[str]:
    """The evaluation's table (`report.json`, `evaluation.svg`), measured before and after."""
    if report is None:
        return []
    from core.report import table_rows

    header, *rows = table_rows(report)
    return [
        "## Evaluation",
        "",
        "Measured side by side in one run (`report.json` has every figure and the settings).",
        "",
        "![Every measure, before and after](evaluation.svg)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
