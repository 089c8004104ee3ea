"""Speed and memory of model variants side by side (core.evaluation.speed) on tiny models."""

from contextlib import nullcontext

import pytest
import torch
from conftest import tiny_model

from contract import Block
from core.blocks import BlockModel
from core.evaluation.speed import SpeedResult, greedy_decode, measure_speed
from core.export.inmemory import pruned_view

REMOVED = [Block("mha", 1), Block("mlp", 2), Block("mlp", 3)]
NO_ATTENTION = [Block("mha", i) for i in range(4)]


def _logits(model) -> torch.Tensor:
    ids = torch.arange(12).reshape(2, 6) % 97
    with torch.no_grad():
        return model(ids).logits


def test_before_after_sizes_speeds_and_restore():
    model = tiny_model("llama", layers=4)
    keys, logits = list(model.state_dict()), _logits(model)
    variants = {
        "before": lambda: nullcontext(model),
        "after": lambda: pruned_view(model, REMOVED),
    }
    results = measure_speed(variants, prompt_len=16, new_tokens=4, repeats=2)

    assert list(results) == ["before", "after"]
    before, after = results["before"], results["after"]
    removed_params = sum(BlockModel(model).block_params(b) for b in REMOVED)
    assert removed_params > 0
    assert before.params == sum(p.numel() for p in model.parameters())
    assert after.params == before.params - removed_params
    assert after.weights_bytes == before.weights_bytes - 4 * removed_params  # fp32, no buffers gone
    for r in results.values():
        assert r.prefill_tokens_per_s > 0 and r.decode_tokens_per_s > 0
        assert r.peak_memory_bytes > r.weights_bytes
        assert r.memory_method == "cpu_profiler_allocations+weights"
        assert SpeedResult(**r.to_json()) == r
    # the shared model is restored after the run
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(_logits(model), logits, rtol=0, atol=0)


def test_peak_memory_sees_the_kv_cache():
    """The run's part of the peak (peak - weights) covers at least the KV cache it must hold, and
    a variant without attention, which keeps no cache, needs clearly less of it."""
    model = tiny_model("llama", layers=4)
    prompt_len, new_tokens = 96, 8
    variants = {
        "base": lambda: nullcontext(model),
        "no_attention": lambda: pruned_view(model, NO_ATTENTION),
    }
    results = measure_speed(variants, prompt_len=prompt_len, new_tokens=new_tokens, repeats=1)
    cfg = model.config
    # keys and values of every layer, fp32; the last decoded token is never fed back, so the
    # cache holds the prompt and new_tokens fed tokens
    kv_bytes = 2 * 4 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
    kv_bytes *= prompt_len + new_tokens
    run = {name: r.peak_memory_bytes - r.weights_bytes for name, r in results.items()}
    assert run["base"] >= kv_bytes
    assert run["no_attention"] < run["base"] - kv_bytes // 2


@pytest.mark.parametrize("removed", [[], REMOVED])
def test_greedy_decode_matches_generate(removed):
    model = tiny_model("llama", layers=4)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    steps = 6
    with pruned_view(model, removed), torch.inference_mode():
        tokens, prefill_s, decode_s = greedy_decode(model, ids, steps)
        expected = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=steps + 1,  # the first token comes from the prefill's logits
            min_new_tokens=steps + 1,
            pad_token_id=0,
        )
    assert tokens.shape == (2, steps + 1)
    torch.testing.assert_close(tokens, expected[:, ids.shape[1] :], rtol=0, atol=0)
    assert prefill_s > 0 and decode_s > 0


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no variants"):
        measure_speed({})
    model = tiny_model("llama", layers=2)
    with pytest.raises(ValueError, match="prompt_len"):
        measure_speed({"m": lambda: nullcontext(model)}, prompt_len=0)
