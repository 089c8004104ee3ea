"""On a GPU (skipped elsewhere): budgets with the pinned host tier, and a model spread over the
GPU and the CPU, give the same search as the single-device engine."""

import pytest
import torch
from conftest import tiny_ids, tiny_model, word_tokenizer

from core.blocks import BlockModel
from core.models import load_model
from core.naive import plain_greedy_search
from core.search import SearchConfig, run_search

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU = torch.device("cuda:0")


def test_every_budget_and_the_host_tier_give_identical_search_on_gpu(arch):
    bm = BlockModel(tiny_model(arch, layers=4).to(GPU))
    ids = tiny_ids(6, 16).to(GPU)
    s = 6 * 16 * 32 * 4  # one cached position, fp32
    configs = {
        "all": SearchConfig(num_blocks=5),
        "one position": SearchConfig(num_blocks=5, cache_budget=s),
        "none": SearchConfig(num_blocks=5, cache_budget=0),
        "host tier": SearchConfig(num_blocks=5, cache_budget=s, host_budget=4 * s),
    }
    runs = {name: run_search(bm, ids, config) for name, config in configs.items()}
    for name, state in runs.items():
        assert state.removed == runs["all"].removed, name
    assert [r.model_dump() for r in runs["all"].removed] == plain_greedy_search(bm, ids, 5)


def test_model_spread_over_gpu_and_cpu(tmp_path):
    model = tiny_model("llama", layers=4)
    model.save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    spread = BlockModel(load_model(str(tmp_path), "cuda:0,cpu").model)
    assert spread.device_at(0) == GPU and spread.device_at(7) == torch.device("cpu")
    assert spread.device_at(spread.num_positions) == torch.device("cpu")  # the final norm
    ids = tiny_ids(6, 16).to(GPU)
    state = run_search(spread, ids, SearchConfig(num_blocks=4, cache_budget=6 * 16 * 32 * 4))
    # exact against the plain search on the same placement, hidden states hopping devices
    assert [r.model_dump() for r in state.removed] == plain_greedy_search(spread, ids, 4)
    # and the same picks as on one GPU (other kernels on the CPU part: PPLs agree to rounding)
    single = run_search(
        BlockModel(load_model(str(tmp_path), "cuda:0").model), ids, SearchConfig(num_blocks=4)
    )
    assert [(r.kind, r.layer) for r in state.removed] == [(r.kind, r.layer) for r in single.removed]
    for a, b in zip(state.removed, single.removed, strict=True):
        assert a.ppl == pytest.approx(b.ppl, rel=1e-4)
