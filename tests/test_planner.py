"""The planner's arithmetic, device placement, and refusing a search that cannot fit."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_ids, tiny_model, word_tokenizer

from contract import ErrorCode, JobSpec, UserError
from contract.memory import Capacity, ModelShape, choose_budget, plan_search
from core.blocks import BlockModel
from core.devices import device_map, layer_devices, parse_devices
from core.models import load_model
from core.search import SearchConfig, run_search

CPU = torch.device("cpu")


def shape_of(model) -> ModelShape:
    return ModelShape.from_config(model.config.to_dict())


def test_parameter_count_from_config_is_exact(arch):
    model = tiny_model(arch, layers=3)
    shape = shape_of(model)
    assert shape.params() == sum(p.numel() for p in model.parameters())
    bm = BlockModel(model)
    assert shape.mha_params() == bm.block_params(bm.candidates("mha")[0])
    assert shape.mlp_params() == bm.block_params(bm.candidates("mlp")[0])


def test_cache_figures_match_the_engines_tensors():
    from core.activations import ActivationCache

    model = tiny_model("llama", layers=4)
    bm, ids = BlockModel(model), tiny_ids(6, 16)
    for budget in (None, 3 * 6 * 16 * 32 * 4, 0):
        plan = plan_search(shape_of(model), 6, 16, "float32", None, budget)
        cache = ActivationCache(bm, ids, None, budget)
        cache.build([])
        stored = {t.data_ptr(): t.nbytes for chunks in cache.acts.values() for t in chunks}
        assert sum(stored.values()) == plan.cache
        assert cache.layout.kept == plan.layout.kept


def spec(**kw) -> JobSpec:
    return JobSpec(model="m", calibration="c", num_blocks=2, samples=16, seq_len=128, **kw)


def test_choose_budget_keeps_everything_when_it_fits_else_what_is_left():
    shape = ModelShape.from_config(tiny_model("llama").config.to_dict())
    everything = plan_search(shape, 16, 128, "float32", None, None)
    assert choose_budget(shape, spec(), Capacity("cpu", everything.peak, 0))[0] is None
    tight = everything.peak - everything.held - everything.cache // 2
    budget, _, plan = choose_budget(shape, spec(), Capacity("cpu", tight, 0))
    assert budget is not None and plan.peak <= tight
    assert 0 < len(plan.layout.kept) < len(everything.layout.kept)


def test_a_setting_that_cannot_fit_is_refused_with_the_arithmetic():
    shape = ModelShape.from_config(tiny_model("llama").config.to_dict())
    floor = plan_search(shape, 16, 128, "float32", None, 0)
    with pytest.raises(UserError) as e:
        choose_budget(shape, spec(), Capacity("cuda:0", floor.peak - 1, 0))
    assert e.value.code == ErrorCode.DOES_NOT_FIT and "model" in e.value.message
    assert "working tensors" in e.value.message and " > " in e.value.message
    with pytest.raises(UserError, match="cache_budget: 1.00 GiB does not fit on cpu"):
        choose_budget(shape, spec(cache_budget="1GiB"), Capacity("cpu", floor.peak + 100, 0))


def test_parse_devices():
    assert parse_devices("cpu") == [CPU]
    assert parse_devices("auto") == (
        [CPU] if not torch.cuda.is_available() else parse_devices("auto")
    )
    for bad, words in [("tpu", "must be cpu, cuda"), ("cpu,cpu", "twice"), ("cuda:0,", "must be")]:
        with pytest.raises(UserError, match=f"device: .*{words}"):
            parse_devices(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda:1 requested but this machine has no CUDA"):
            parse_devices("cuda:1")


def test_layers_are_split_in_contiguous_runs():
    a, b = torch.device("cuda:0"), torch.device("cuda:1")
    assert layer_devices(5, [a, b]) == [a, a, b, b, b] or layer_devices(5, [a, b]) == [
        a,
        a,
        a,
        b,
        b,
    ]
    assert layer_devices(4, [a, b], weights=[3.0, 1.0]) == [a, a, a, b]
    dmap = device_map(4, [a, b], tied=True)
    assert dmap["model.embed_tokens"] == dmap["lm_head"] == "cuda:0"  # tied to the embeddings
    assert dmap["model.norm"] == "cuda:1" and dmap["model.layers.3"] == "cuda:1"
    assert device_map(4, [a, b], tied=False)["lm_head"] == "cuda:1"


def test_device_map_load_equals_the_model_in_memory(tmp_path, arch):
    """Loading goes through a device map (the model built on the meta device, each weight read
    straight onto its device): the loaded model searches exactly as the one it was saved from."""
    model = tiny_model(arch, layers=3)
    model.save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), "cpu")
    ids = tiny_ids(4, 12)
    config = SearchConfig(num_blocks=3, cache_budget=0)
    assert run_search(BlockModel(loaded.model), ids, config).removed == (
        run_search(BlockModel(model), ids, SearchConfig(num_blocks=3)).removed
    )


def test_plan_command_prints_the_budgets_table():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "blockprune",
            "plan",
            "--samples",
            "16",
            "--seq-len",
            "128",
            "--tflops",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("model      134,515,008 parameters") for line in lines)
    assert "throughput 1.000 / 1.000 TFLOP/s, decoder / lm_head (given)" in out.stdout
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    for name in ("all+held", "all", "1/2", "1/4", "none", "chosen"):
        assert rows[name][-2] == "yes", rows[name]  # a 135M model fits this machine at any budget
    assert rows["chosen"][1] == "unlimited"  # so the search keeps every position


@pytest.mark.slow
def test_planned_peak_is_within_10_percent_of_the_measured_on_smollm2():
    """bench/memory.py measures the resident high-water mark of real searches on SmolLM2 (one
    process per budget) and prints the planner's figure beside it."""
    out = subprocess.run(
        [
            sys.executable,
            "bench/memory.py",
            "--samples",
            "4",
            "--seq-len",
            "32",
            "--iterations",
            "1",
            "--budgets",
            "all+held,one position",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["budget"] for r in rows] == ["all+held", "one position"]
    for r in rows:
        assert abs(r["planned_peak"] / r["measured_peak"] - 1) <= 0.10, (r, out.stdout)
    assert rows[1]["measured_peak"] < rows[0]["measured_peak"]  # the budget really saves memory


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"seq_len": 129}, ("seq_len", "at most the model's 128 positions")),
        ({"num_blocks": 9}, ("num_blocks", "at most the model's 8 mix blocks (4 layers), got 9")),
        ({"num_blocks": 5, "block_types": "mha"}, ("num_blocks", "4 mha blocks")),
        (
            {"evaluation": {"seq_len": 256}},
            ("evaluation.seq_len", "128 positions (max_position_embeddings), got 256"),
        ),
    ],
)
def test_a_shape_the_model_cannot_take_is_named_before_any_plan(fields, problem):
    shape = ModelShape.from_config(tiny_model("llama").config.to_dict())  # 4 layers, 128 positions
    ok = JobSpec(model="m", calibration="c.txt", num_blocks=8, seq_len=128)
    assert shape.problem(ok) is None
    spec = JobSpec(**{**ok.model_dump(exclude_defaults=True), **fields})
    field, message = shape.problem(spec)
    assert field == problem[0] and problem[1] in message, message
