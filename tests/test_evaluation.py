"""The evaluation: held-out PPL by its definition, the in-memory pruned model equals the export,
and a report reaches report.json, evaluation.svg, the model card and the CLI's table."""

import json
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    random_text,
    tiny_ids,
    tiny_model,
    tiny_spec,
    word_tokenizer,
    write_model_dir,
)

from blockprune.cli import main
from contract import Block, UserError
from contract.evaluation import EvaluationSpec
from core.blocks import BlockModel
from core.evaluation.perplexity import (
    agreement,
    heldout_ppl,
    reference_log_probs,
    window_starts,
)
from core.evaluation.run import evaluate
from core.export import export_pruned, load_pruned
from core.export.inmemory import pruned_view
from core.naive import full_pass_ppl
from core.pipeline import run_prune

REMOVED = [Block("mlp", 1), Block("mha", 2), Block("mlp", 2)]


def test_disjoint_windows_give_the_searchs_measure(arch):
    model = tiny_model(arch, layers=3)
    stream = tiny_ids(1, 5 * 16 + 7)[0]  # 5 windows and a tail that is left out
    result = heldout_ppl(model, stream, seq_len=16, batch_size=2)
    windows = stream[: 5 * 16].view(5, 16)
    assert result.ppl == pytest.approx(full_pass_ppl(BlockModel(model), windows, []), rel=1e-6)
    assert (result.windows, result.tokens) == (5, 5 * 15)


def test_agreement_compares_the_pruned_model_with_its_base():
    model = tiny_model("llama", layers=3)
    stream = tiny_ids(1, 3 * 16 + 5)[0]
    reference = reference_log_probs(model, stream, seq_len=16)
    same = agreement(model, stream, 16, reference, batch_size=2)
    assert same.top1 == 1.0 and same.kl == pytest.approx(0.0, abs=1e-3) and same.tokens == 48
    windows = stream[:48].view(3, 16)
    with torch.no_grad(), pruned_view(model, REMOVED) as pruned:
        result = agreement(pruned, stream, 16, reference, batch_size=2)
        ours = pruned(windows).logits.log_softmax(-1)
    with torch.no_grad():
        base = model(windows).logits.log_softmax(-1)
    kl = (base.exp() * (base - ours)).sum(-1).mean().item()
    top1 = (base.argmax(-1) == ours.argmax(-1)).float().mean().item()
    assert result.kl == pytest.approx(kl, rel=1e-2) and result.kl > 0  # the reference is fp16
    assert result.top1 == pytest.approx(top1)


def test_a_sliding_window_scores_each_later_token_once_with_full_context():
    model = tiny_model("llama", layers=2)
    stream = tiny_ids(1, 40)[0]
    seq_len, stride = 12, 5
    result = heldout_ppl(model, stream, seq_len, stride, batch_size=3)
    # By hand: the first window predicts its 11 tokens; every later window, the `stride` tokens
    # at its end, each from all the tokens of the window before it.
    nlls = []
    with torch.no_grad():
        for n, begin in enumerate(window_starts(len(stream), seq_len, stride)):
            window = stream[begin : begin + seq_len]
            logp = F.log_softmax(model(window[None]).logits[0].double(), dim=-1)
            first = 1 if n == 0 else seq_len - stride
            nlls += [-logp[t - 1, window[t]].item() for t in range(first, seq_len)]
    assert result.tokens == len(nlls) == 11 + 5 * 5
    assert result.ppl == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)


def test_too_short_a_stream_names_the_field():
    with pytest.raises(UserError) as e:
        heldout_ppl(tiny_model("llama", layers=1), tiny_ids(1, 10)[0], seq_len=16)
    assert e.value.field == "data"


def test_stride_above_seq_len_is_refused():
    with pytest.raises(ValueError, match="stride"):
        EvaluationSpec(data=["builtin:stdlib-docs-heldout"], seq_len=16, stride=32)


def test_the_pruned_view_computes_the_in_memory_pruned_model_and_is_undone(arch):
    model = tiny_model(arch, layers=3)
    ids = tiny_ids(2, 12)
    modules_before = [m for m in model.modules()]
    expected = BlockModel(model).forward_logits(ids, REMOVED)
    with pruned_view(model, REMOVED) as pruned, torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, expected, rtol=0, atol=1e-5)
        kept = sum(p.numel() for p in pruned.parameters())
    bm = BlockModel(model)
    assert kept == bm.total_params() - sum(bm.block_params(b) for b in REMOVED)
    assert [m for m in model.modules()] == modules_before  # the very same modules, restored


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny export with an evaluation of held-out text, and the model it came from."""
    d = tmp_path_factory.mktemp("eval")
    model, tokenizer = tiny_model("llama", layers=3), word_tokenizer()
    (d / "heldout.txt").write_text(random_text(600, seed=7))
    spec = EvaluationSpec(data=[str(d / "heldout.txt")], seq_len=16, stride=8)
    variants = {
        "before": lambda: nullcontext(model),
        "after": lambda: pruned_view(model, REMOVED),
    }
    report = evaluate(variants, tokenizer, spec)
    removed = [{**b.model_dump(), "ppl": 1.0} for b in REMOVED]
    out = export_pruned(
        model,
        tokenizer,
        removed,
        d / "export",
        base_ppl=1.0,
        calibration={"source": "x"},
        seed=0,
        method="sleb",
        evaluation=report,
    )
    return d, model, tokenizer, report, out


def test_the_reports_after_is_the_exports_own_ppl(export):
    d, model, tokenizer, report, out = export
    source = str(d / "heldout.txt")
    entry = report["perplexity"][source]
    assert entry["after"] != entry["before"] and min(entry["after"], entry["before"]) > 1
    stream = torch.tensor(tokenizer(random_text(600, seed=7))["input_ids"])[:65536]
    reloaded = heldout_ppl(load_pruned(out), stream, 16, 8)
    assert entry["after"] == pytest.approx(reloaded.ppl, rel=1e-6)
    assert entry["tokens"] == reloaded.tokens
    bm = BlockModel(model)
    assert report["params"]["before"] - report["params"]["after"] == sum(
        bm.block_params(b) for b in REMOVED
    )


def test_the_export_carries_the_report_plot_card_and_method(export):
    _, _, _, report, out = export
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    svg = (out / "evaluation.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<rect") >= 2 * 2 + 1  # bars of 2 measures
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and "(evaluation.svg)" in card
    ppl_row = next(line for line in card.splitlines() if line.startswith("| ppl "))
    assert f"{report['perplexity'][next(iter(report['perplexity']))]['after']:.3f}" in ppl_row
    assert json.loads((out / "pruning.json").read_text())["method"] == "sleb"
    assert "SLEB" in card


def test_prune_with_an_evaluation_and_eval_of_its_export(export, tmp_path, capsys):
    d, *_ = export
    model_dir = tmp_path / "model"
    tiny_model("llama", layers=3).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    (tmp_path / "calib.txt").write_text(random_text(300))
    heldout = str(d / "heldout.txt")
    common = ["--samples", "4", "--seq-len", "16", "--num-blocks", "2"]
    args = ["prune", "--model", str(model_dir), "--calibration", str(tmp_path / "calib.txt")]
    flags = ["--eval-data", heldout, "--eval-seq-len", "16", "--method", "sleb"]
    assert main([*args, *common, *flags, "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert f"ppl {heldout}" in printed and report["spec"]["seq_len"] == 16
    # `blockprune eval` on that export: the base model from pruning.json, then the export
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "out"), "--data", heldout,
                 "--seq-len", "16", "--output", str(out)]) == 0  # fmt: skip
    again = json.loads((out / "report.json").read_text())
    assert again["variants"] == ["before", "after"]
    for name in ("before", "after"):
        assert again["perplexity"][heldout][name] == pytest.approx(
            report["perplexity"][heldout][name], rel=1e-6
        )
    assert (out / "evaluation.svg").is_file()


def test_eval_of_an_export_whose_base_is_not_here_measures_the_export_alone(
    export, tmp_path, capsys
):
    d, _, _, _, out = export  # its pruning.json names no reachable base model
    assert main(["eval", "--model", str(out), "--data", str(d / "heldout.txt"),
                 "--seq-len", "16", "--output", str(tmp_path / "e")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "pass --base" in printed
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["variants"] == ["after"]


def test_run_prune_reports_the_evaluating_phase(export, tmp_path):
    d, *_ = export
    write_model_dir(tmp_path, "mistral", layers=3, calib_words=300)
    spec = tiny_spec(
        tmp_path,
        num_blocks=2,
        method="shortgpt",
        evaluation={"data": [str(d / "heldout.txt")], "seq_len": 16},
    )
    phases = []
    result = run_prune(spec, tmp_path / "out", on_phase=phases.append)
    assert [p.value for p in phases][-2:] == ["evaluating", "exporting"]
    assert result.evaluation is not None and result.evaluation["variants"] == ["before", "after"]
