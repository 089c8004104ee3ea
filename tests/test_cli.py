"""The CLI end to end on tiny models: results, resume, and one-line errors with exit code 2."""

import argparse
import json
import re
from typing import Literal, get_args, get_origin

import pytest
import torch
from conftest import tiny_model, tiny_spec, word_tokenizer, write_model_dir

from blockprune.cli import main
from contract import EMBEDDED_DEFAULTS, Block, JobSpec, SearchState
from contract.evaluation import EvaluationSpec
from core.blocks import BlockModel
from core.calibration import load_calibration
from core.cli import add_engine_commands
from core.naive import plain_greedy_search
from core.pipeline import run_prune


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write_model_dir(d)
    return d


def prune_args(workdir, out, *extra):
    return [
        "prune",
        "--model",
        str(workdir / "model"),
        "--calibration",
        str(workdir / "calib.txt"),
        "--samples",
        "4",
        "--seq-len",
        "16",
        "--output",
        str(out),
        *extra,
    ]


def test_prune_matches_plain_greedy_and_prints_summary(workdir, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(prune_args(workdir, out, "--num-blocks", "3")) == 0
    printed = capsys.readouterr().out
    info = json.loads((out / "pruning.json").read_text())
    bm = BlockModel(tiny_model("llama", layers=4))
    ids = load_calibration(str(workdir / "calib.txt"), word_tokenizer(), 4, 16).input_ids
    assert info["removed"] == plain_greedy_search(bm, ids, 3)
    table = [line.split() for line in printed.splitlines() if re.match(r"\s*\d+ ", line)]
    assert table == [
        ["0", "-", "-", f"{info['base_ppl']:.3f}"],
        *[
            [str(n), r["block"], str(r["layer"]), f"{r['ppl']:.3f}"]
            for n, r in enumerate(info["removed"], 1)
        ],
    ]
    before, after = info["params_before"], info["params_after"]
    assert after < before
    assert (
        f"parameters: {before:,} -> {after:,} ({100 * (1 - after / before):.1f}% removed)"
        in printed
    )
    assert str(out.resolve()) in printed
    assert not (tmp_path / "pruned.search-state.json").exists()
    # `blockprune ppl` on the export gives the search's final PPL
    assert (
        main(
            [
                "ppl",
                "--model",
                str(out),
                "--data",
                str(workdir / "calib.txt"),
                "--samples",
                "4",
                "--seq-len",
                "16",
            ]
        )
        == 0
    )
    ppl = float(capsys.readouterr().out.split()[-1])
    assert ppl == pytest.approx(info["removed"][-1]["ppl"], rel=1e-4)


def test_resume_continues_a_saved_search(workdir, tmp_path, capsys):
    spec = tiny_spec(workdir, num_blocks=3)
    saved = []
    partial = run_prune(
        spec, tmp_path / "unused", on_iteration=saved.append, should_stop=lambda: len(saved) >= 1
    )
    assert partial.cancelled and partial.out_dir is None and len(saved) == 1
    out = tmp_path / "resumed"
    (tmp_path / "resumed.search-state.json").write_text(json.dumps(saved[0].to_json()))
    assert main(prune_args(workdir, out, "--num-blocks", "3", "--resume")) == 0
    assert "resuming after 1 removed blocks" in capsys.readouterr().out
    full = run_prune(spec, tmp_path / "full")
    removed = json.loads((out / "pruning.json").read_text())["removed"]
    assert removed == [r.model_dump() for r in full.state.removed]


def test_resume_refuses_a_state_from_other_settings(workdir, tmp_path, capsys):
    out = tmp_path / "p"
    state = {"config_hash": "0123", "base_ppl": 1.0, "removed": [], "iteration": 0}
    (tmp_path / "p.search-state.json").write_text(json.dumps(state))
    assert main(prune_args(workdir, out, "--num-blocks", "2", "--resume")) == 2
    assert (
        "resume: the saved search state was made with different settings" in capsys.readouterr().err
    )


def test_resume_names_the_settings_that_differ(workdir, tmp_path, capsys):
    spec = tiny_spec(workdir, num_blocks=2)
    (tmp_path / "p.search-state.json").write_text(json.dumps(SearchState.new(spec).to_json()))
    args = prune_args(workdir, tmp_path / "p", "--num-blocks", "2", "--seq-len", "8", "--resume")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: resume: ") and err.count("\n") == 1
    assert "(seq_len: 16 in the state, 8 now)" in err


def test_prune_options_are_exactly_the_jobspec_fields():
    """Every JobSpec field is a --kebab option with the field's default and choices, so a new
    field cannot be forgotten; the other options are the machine's, not the job's."""
    sub = argparse.ArgumentParser().add_subparsers()
    add_engine_commands(sub)
    options = {a.dest: a for a in sub.choices["prune"]._actions if a.dest != "help"}
    evaluation = {f"eval_{n}" for n in EvaluationSpec.model_fields}  # its own options
    assert options.keys() - JobSpec.model_fields.keys() == {
        "output",
        "device",
        "resume",
        "overwrite",
        "verify",
        *evaluation,
    }
    assert "evaluation" not in options
    for name, info in JobSpec.model_fields.items():
        if name == "evaluation":
            continue
        action = options[name]
        flag = "--" + name.replace("_", "-")
        negated = ["--no-" + flag[2:]] if info.annotation is bool else []  # --heal / --no-heal
        assert action.option_strings == [flag, *negated]
        default = EMBEDDED_DEFAULTS[name] if info.is_required() else info.default
        assert action.default == default
        literal = get_origin(info.annotation) is Literal
        assert action.choices == (get_args(info.annotation) if literal else None)
        assert action.help.startswith(info.description)
    targets = sub.choices["prune"]._mutually_exclusive_groups
    assert [[a.dest for a in g._group_actions] for g in targets] == [["num_blocks", "param_ratio"]]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-blocks", "0"], "num_blocks: must be at least 1"),
        (
            ["--num-blocks", "9"],
            "num_blocks: must be at most the model's 8 mix blocks (4 layers), got 9",
        ),
        (["--param-ratio", "1.5"], "param_ratio: must be between 0 and 1"),
        (["--samples", "500"], "too little text"),
        (["--seq-len", "1"], "seq_len: must be at least 2"),
        (["--model", "/nonexistent/model"], "model:"),
        (["--calibration", "/nonexistent.txt"], "calibration:"),
        (["--calibration", "data.csv"], "calibration:"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--batch-size", "0"], ":"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(workdir, tmp_path, capsys, extra, message):
    assert main(prune_args(workdir, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_bad_argument_values_exit_2(workdir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(prune_args(workdir, tmp_path / "o", "--block-types", "attn"))
    assert e.value.code == 2 and "--block-types" in capsys.readouterr().err


def test_existing_output_is_refused_without_overwrite(workdir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(prune_args(workdir, out, "--num-blocks", "1")) == 2
    assert "output:" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_real_smollm2_end_to_end(tmp_path):
    """The embedded default model, pruned on a little text, exported and reloaded with stock
    transformers (remote code), gives the in-memory pruned model's logits."""
    from transformers import AutoModelForCausalLM

    from core.models import load_model

    out = tmp_path / "smol"
    args = [
        "prune",
        "--samples",
        "2",
        "--seq-len",
        "32",
        "--num-blocks",
        "1",
        "--block-types",
        "mlp",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    info = json.loads((out / "pruning.json").read_text())
    assert len(info["removed"]) == 1 and info["params_after"] < info["params_before"]
    loaded = load_model("builtin:smollm2-135m")
    ids = load_calibration("builtin:stdlib-docs", loaded.tokenizer, 2, 32).input_ids
    removed = [Block(r["block"], r["layer"]) for r in info["removed"]]
    expected = BlockModel(loaded.model).forward_logits(ids, removed)
    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, expected, rtol=0, atol=1e-4)


def test_heal_is_a_flag_and_lands_in_pruning_json(workdir, tmp_path):
    healed, plain = tmp_path / "healed", tmp_path / "plain"
    assert main(prune_args(workdir, healed, "--num-blocks", "2", "--heal")) == 0
    assert main(prune_args(workdir, plain, "--num-blocks", "2", "--no-heal")) == 0
    record = json.loads((healed / "pruning.json").read_text())
    assert record["healing"]["spans"] and "healing" not in json.loads(
        (plain / "pruning.json").read_text()
    )
    assert record["removed"] == json.loads((plain / "pruning.json").read_text())["removed"]


def test_plan_refuses_a_shape_the_model_cannot_take_without_allocating_it(capsys):
    """A 131,072-token sequence on a model of 8,192 positions: an error naming the field, not a
    traceback from a 64 GiB mask."""
    assert main(["plan", "--samples", "1", "--seq-len", "131072", "--tflops", "1"]) == 2
    err = capsys.readouterr().err
    assert "seq_len: must be at most the model's 8,192 positions" in err and "Traceback" not in err
