"""Which method gives the best model at a given size? Every method on SmolLM2-135M at cuts of
the parameters, measured on held-out text of three domains and against the dense model.

- Calibration: SAMPLES x SEQ_LEN tokens of WikiText-2 valid; draw k starts k x DRAW_STRIDE tokens
  in (draw 0 is the start of the file, as a job's calibration is). `--draw-methods` run in every
  draw, the others in draw 0 only.
- Sizes: a greedy method runs once per draw to the largest cut, and a smaller cut is the prefix of
  its removals within that cut (what a search with the smaller `param_ratio` returns; layer
  methods step a layer at a time). A budget method (evo) runs once per cut. Each row shows the
  size it reached: at the cut or the nearest below.
- Measures, the same tokens for every model: PPL on WikiText-2 test, builtin:stdlib-docs-heldout
  and the installed packages' READMEs (pypi-readmes: prose and code, another domain), each its
  first EVAL_TOKENS tokens in disjoint windows of EVAL_SEQ_LEN; and on WikiText-2 test, the top-1
  agreement and the mean KL(dense || pruned) of the next-token distributions.
- Healing: `--heal-methods` are measured a second time healed (core/heal.py), fitted on
  HEAL_SAMPLES sequences from the same draw's start (more than the search's: a map of the hidden
  size squared needs more tokens than it has entries per row): rows "<method>+heal".
- Resumable: every finished (method, draw) is saved to fidelity-state.json at once, and a rerun
  with the same settings skips it. `--reuse FILE` takes a method's removals (and search time)
  from an earlier fidelity.json instead of searching again (`--reuse-methods`, by default
  BlockPruner, whose search to 20% takes over an hour here).

    python bench/fidelity.py [--cuts 0.1,0.2,0.3 --methods blockpruner,shortgpt,sleb,evo]
        [--draws 3 --draw-methods sleb,evo] [--reuse bench/results/fidelity-v1.json]

Writes bench/results/fidelity.json and fidelity.svg; last line: RESULT, the method with the lowest
WikiText-2 test PPL at each cut (mean over draws).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from racing import pypi_readmes  # noqa: E402  (the bench scripts' folder)

from contract import Block  # noqa: E402
from contract.methods import METHOD_TRAITS  # noqa: E402
from core.blocks import BlockModel  # noqa: E402
from core.calibration import read_tokens  # noqa: E402
from core.evaluation.perplexity import agreement, heldout_ppl, reference_log_probs  # noqa: E402
from core.export.inmemory import pruned_view  # noqa: E402
from core.heal import healed  # noqa: E402
from core.methods import run_method  # noqa: E402
from core.models import load_model  # noqa: E402
from core.naive import full_pass_ppl  # noqa: E402
from core.plot import grouped_bars_svg  # noqa: E402
from core.report import format_table  # noqa: E402
from core.search import SearchConfig  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2"
RESULTS = Path(__file__).resolve().parent / "results"
DRAW_STRIDE = 50_000  # tokens between calibration draws (valid.txt has about 250k)
TEXTS = ("wikitext2-test", "stdlib-docs-heldout", "pypi-readmes")


def heldout_texts(args, tokenizer) -> dict[str, torch.Tensor]:
    sources = {
        "wikitext2-test": str(args.data / "test.txt"),
        "stdlib-docs-heldout": "builtin:stdlib-docs-heldout",
        "pypi-readmes": pypi_readmes(),
    }
    texts = {}
    for name, source in sources.items():
        _, ids, _, _ = read_tokens(source, tokenizer, args.eval_tokens)
        texts[name] = torch.tensor(ids[: args.eval_tokens], dtype=torch.long)
    return texts


def calibration(args, tokenizer, draw: int, samples: int | None = None) -> torch.Tensor:
    """Draw `draw`'s SAMPLES x SEQ_LEN tokens of valid.txt, from token draw x DRAW_STRIDE."""
    samples = samples or args.samples
    need = samples * args.seq_len
    start = draw * DRAW_STRIDE
    _, ids, _, _ = read_tokens(str(args.data / "valid.txt"), tokenizer, start + need)
    if len(ids) < start + need:
        raise SystemExit(f"valid.txt has {len(ids)} tokens: too few for draw {draw}")
    return torch.tensor(ids[start : start + need], dtype=torch.long).view(samples, -1)


def within(bm: BlockModel, blocks: list[Block], step: int, cut: float) -> list[Block]:
    """The longest prefix of whole steps (a layer for a layer method) within `cut`."""
    kept: list[Block] = []
    removed = 0
    for s in range(0, len(blocks), step):
        removed += sum(bm.block_params(b) for b in blocks[s : s + step])
        if removed / bm.total_params() > cut:
            break
        kept += blocks[s : s + step]
    return kept


def search(args, bm: BlockModel, calib, method: str, draw: int, cuts: list[float]) -> dict:
    """{cut: (removed blocks, search seconds)}: one search to the largest of `cuts`."""
    t0 = time.time()
    config = SearchConfig(
        method=method, param_ratio=max(cuts), batch_size=args.batch_size, seed=draw
    )
    blocks = run_method(bm, calib, config).removed_blocks
    took = time.time() - t0
    print(f"  {method} draw {draw}: searched to {max(cuts):.0%} in {took:.0f} s", flush=True)
    step = 2 if METHOD_TRAITS[method].layer_units else 1
    return {cut: (within(bm, blocks, step, cut), took) for cut in cuts}


def work(args, cuts: list[float]) -> list[tuple[str, int, list[float]]]:
    """(method, draw, cuts) of each search, in the order given: a budget method searches once
    per cut, a greedy one once to the largest."""
    out = []
    for draw in range(args.draws):
        for method in args.methods.split(","):
            if draw > 0 and method not in args.draw_methods.split(","):
                continue
            groups = [[c] for c in cuts] if METHOD_TRAITS[method].budget_only else [cuts]
            out += [(method, draw, group) for group in groups]
    return out


def measure(args, loaded, texts, blocks: list[Block]) -> dict:
    """PPL on every held-out text, and the agreement with the dense model on WikiText-2 test."""
    if "reference" not in texts:  # the dense model's, computed once (before any healing)
        texts["reference"] = reference_log_probs(
            loaded.model, texts["wikitext2-test"], args.eval_seq_len
        )
    with pruned_view(loaded.model, blocks) as pruned:
        ppl = {name: heldout_ppl(pruned, texts[name], args.eval_seq_len).ppl for name in TEXTS}
        agree = agreement(pruned, texts["wikitext2-test"], args.eval_seq_len, texts["reference"])
    return {"ppl": ppl, "top1": agree.top1, "kl": agree.kl}


def row(args, loaded, bm, texts, calib, method, draw, cut, blocks, took) -> dict:
    """One pruned model's measures (the model as it is: healed inside `healed`)."""
    size = sum(bm.block_params(b) for b in blocks) / bm.total_params()
    out = {"method": method, "draw": draw, "cut": cut, "params_removed": size,
           "removed": [str(b) for b in blocks], "search_s": took,
           "calibration_ppl": full_pass_ppl(bm, calib, blocks, args.batch_size),
           **measure(args, loaded, texts, blocks)}  # fmt: skip
    ppls = ", ".join(f"{t} {out['ppl'][t]:.2f}" for t in TEXTS)
    print(f"  {method} draw {draw} <= {cut:.0%}: {size:.1%} removed, {ppls}", flush=True)
    return out


def reused_searches(path: Path | None, methods: list[str]) -> dict[str, dict]:
    """{method: {cut: (blocks, search s)}} from an earlier fidelity.json's draw-0 rows."""
    if path is None:
        return {}
    out: dict[str, dict] = {}
    for r in json.loads(path.read_text())["rows"]:
        if r["method"] in methods and r.get("draw", 0) == 0 and r["cut"]:
            blocks = [Block.parse(n.split(".")) for n in r["removed"]]
            out.setdefault(r["method"], {})[r["cut"]] = (blocks, r["search_s"])
    return out


def run(args, loaded, bm, texts, state: dict, state_file: Path) -> None:
    cuts = [float(c) for c in args.cuts.split(",")]
    reuse = reused_searches(args.reuse, args.reuse_methods.split(","))
    if "dense" not in state:
        state["dense"] = measure(args, loaded, texts, [])
        state_file.write_text(json.dumps(state, indent=1) + "\n")
    calib: dict[int, torch.Tensor] = {}
    for method, draw, group in work(args, cuts):
        key = f"{method}/{draw}/{','.join(f'{c:g}' for c in group)}"
        if key in state:
            continue
        if draw not in calib:
            calib[draw] = calibration(args, loaded.tokenizer, draw)
        reused = reuse.get(method) if draw == 0 else None
        if reused is not None:
            found = {c: v for c, v in reused.items() if c in group}
            if len(found) < len(group):
                print(f"  {method}: --reuse lacks cuts {set(group) - set(found)}: not run")
        else:
            found = search(args, bm, calib[draw], method, draw, group)
        rows = []
        heals = method in args.heal_methods.split(",")
        for cut, (blocks, took) in found.items():
            rows.append(row(args, loaded, bm, texts, calib[draw], method, draw, cut, blocks, took))
            if heals:
                heal_ids = calibration(args, loaded.tokenizer, draw, args.heal_samples)
                with healed(bm, heal_ids, blocks, args.batch_size or 8):
                    rows.append(
                        row(
                            args,
                            loaded,
                            bm,
                            texts,
                            calib[draw],
                            f"{method}+heal",
                            draw,
                            cut,
                            blocks,
                            took,
                        )  # fmt: skip
                    )
        state[key] = rows
        state_file.write_text(json.dumps(state, indent=1) + "\n")


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ({min(values):.1f}-{max(values):.1f})"


def report(args, state: dict) -> None:
    rows = [r for key, rs in state.items() if key != "dense" for r in rs]
    dense = state["dense"]
    table = [("method", "cut", "draws", "removed", *TEXTS, "top-1", "KL", "search s")]
    table.append(
        ("dense", "-", "-", "0.0%", *(f"{dense['ppl'][t]:.2f}" for t in TEXTS), "1.000", "0", "0")
    )
    groups, best = [], {}
    for cut in sorted({r["cut"] for r in rows}):
        means = {}
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method and r["cut"] == cut]
            if not mine:
                continue
            means[method] = statistics.mean(r["ppl"]["wikitext2-test"] for r in mine)
            table.append((method, f"<= {cut:.0%}", str(len(mine)),
                          spread([100 * r["params_removed"] for r in mine]) + "%",
                          *(spread([r["ppl"][t] for r in mine]) for t in TEXTS),
                          f"{statistics.mean(r['top1'] for r in mine):.3f}",
                          f"{statistics.mean(r['kl'] for r in mine):.3f}",
                          f"{statistics.mean(r['search_s'] for r in mine):.0f}"))  # fmt: skip
        best[cut] = min(means, key=lambda m: means[m])
        groups.append((f"cut <= {cut:.0%}: WikiText-2 test PPL (lower is better)",
                       {"dense": dense["ppl"]["wikitext2-test"], **means}, ".1f"))  # fmt: skip
    print(format_table(table))
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"settings": {k: str(v) for k, v in vars(args).items()}, "dense": dense, "rows": rows}
    (args.out / "fidelity.json").write_text(json.dumps(record, indent=1) + "\n")
    svg = grouped_bars_svg("SmolLM2-135M, by pruning method and cut", groups)
    (args.out / "fidelity.svg").write_text(svg)
    print("RESULT " + " ".join(f"best_at_{cut:g}={m}" for cut, m in best.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--cuts", default="0.1,0.2,0.3")
    parser.add_argument("--methods", default="blockpruner,shortgpt,sleb,evo")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--draw-methods", default="sleb,evo")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--reuse", type=Path, help="an earlier fidelity.json's draw-0 removals")
    parser.add_argument("--reuse-methods", default="blockpruner", help="the methods to reuse")
    parser.add_argument(
        "--heal-methods", default="evo", help="also measure these methods' models healed"
    )
    parser.add_argument("--heal-samples", type=int, default=64, help="sequences healing fits on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("builtin:smollm2-135m", "cpu", "float32")
    bm = BlockModel(loaded.model)
    texts = heldout_texts(args, loaded.tokenizer)
    print(", ".join(f"{name}: {len(ids):,} tokens" for name, ids in texts.items()), flush=True)
    state_file = args.out / "fidelity-state.json"
    settings = {
        k: str(getattr(args, k)) for k in ("samples", "seq_len", "eval_tokens", "eval_seq_len")
    }
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.get("settings", settings) != settings:
        raise SystemExit(
            f"{state_file} was made with {state['settings']}: move it away to start anew"
        )
    state["settings"] = settings
    args.out.mkdir(parents=True, exist_ok=True)
    run(args, loaded, bm, texts, state, state_file)
    report(args, {k: v for k, v in state.items() if k != "settings"})


if __name__ == "__main__":
    main()
