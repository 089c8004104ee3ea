"""Plain exports (core.export.modeling_code): a result that removes only whole layers is written
as the base architecture with fewer layers, which stock transformers loads without remote code,
with the per-layer config fields following the kept layers."""

import json

import pytest
import torch
from conftest import tiny_ids
from test_export import RECORD, build_model, zeroed_copy

from contract import Block, UserError
from contract.blocks import layer_blocks
from core.blocks import BlockModel
from core.export import export_pruned, load_pruned
from core.export.gguf import gguf_config
from core.export.modeling_code import MODELING_FILE, per_layer_fields

# Layers 1 and 3 whole (SLEB's kind of result), in removal order with their PPLs.
LAYERS = [
    {**b.model_dump(), "ppl": 11.0 + n} for n, b in enumerate(layer_blocks(1) + layer_blocks(3))
]


def plain_loaded(out):
    """The export as stock transformers loads it: no trust_remote_code."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out, dtype="auto").eval()


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_whole_layers_export_as_the_stock_architecture(arch, tmp_path):
    model = build_model(arch)
    out = export_pruned(model, None, LAYERS, tmp_path / arch, **RECORD)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch and config["num_hidden_layers"] == 2
    assert "auto_map" not in config and "block_configs" not in config
    assert config["architectures"] == [type(model).__name__]
    assert not (out / MODELING_FILE).exists()
    if getattr(model.config, "layer_types", None) is not None:
        assert config["layer_types"] == [model.config.layer_types[i] for i in (0, 2)]
    pruning = json.loads((out / "pruning.json").read_text())
    assert pruning["layout"] == "plain" and pruning["kept_layers"] == [0, 2]
    card = (out / "README.md").read_text()
    assert f'from_pretrained("{out.name}")' in card and "trust_remote_code" not in card

    ids = tiny_ids()
    expected = BlockModel(model).forward_logits(ids, [Block.parse(r) for r in LAYERS])
    with torch.no_grad():
        for name, loaded in (("stock", plain_loaded(out)), ("core", load_pruned(out))):
            assert type(loaded) is type(model), name
            torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=0)
    # generate(), with its KV cache and past Mistral's and Qwen's sliding window (6 tokens)
    prompt = tiny_ids()[:2, :5]
    reference = zeroed_copy(model, LAYERS).generate(prompt, max_new_tokens=8, do_sample=False)
    tokens = plain_loaded(out).generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(tokens, reference)


def test_a_flag_keeps_the_general_layout_and_a_split_layer_needs_it(tmp_path):
    model = build_model("llama")
    general = export_pruned(model, None, LAYERS, tmp_path / "general", general=True, **RECORD)
    config = json.loads((general / "config.json").read_text())
    assert config["model_type"] == "blockprune" and (general / MODELING_FILE).is_file()
    assert json.loads((general / "pruning.json").read_text())["layout"] == "general"
    one_block = export_pruned(model, None, LAYERS[:3], tmp_path / "split", **RECORD)
    assert json.loads((one_block / "config.json").read_text())["model_type"] == "blockprune"
    ids = tiny_ids()
    with torch.no_grad():
        torch.testing.assert_close(
            load_pruned(general)(ids).logits, plain_loaded_logits(model, LAYERS, tmp_path, ids)
        )


def plain_loaded_logits(model, removed, tmp_path, ids):
    out = export_pruned(model, None, removed, tmp_path / "plain", **RECORD)
    with torch.no_grad():
        return plain_loaded(out)(ids).logits


def test_per_layer_fields_follow_the_kept_layers():
    config = {
        "num_hidden_layers": 4,
        "layer_types": ["full_attention", "sliding_attention"] * 2,
        "no_rope_layers": [1, 0, 1, 1],
        "mlp_only_layers": [1, 3],  # layer indices, renumbered
        "hidden_size": 8,
    }
    assert per_layer_fields(config, [0, 3]) == {
        "num_hidden_layers": 2,
        "layer_types": ["full_attention", "sliding_attention"],
        "no_rope_layers": [1, 1],
        "mlp_only_layers": [1],
    }


def test_gguf_reads_a_plain_export_and_a_stray_config_is_refused(tmp_path):
    out = export_pruned(build_model("llama"), None, LAYERS, tmp_path / "plain", **RECORD)
    config, flags = gguf_config(out)
    assert config.num_hidden_layers == 2 and flags == [(False, False)] * 2
    (out / "pruning.json").unlink()  # a stock model folder is not an export
    with pytest.raises(UserError, match="not a BlockPrune export"):
        load_pruned(out)


def test_a_layer_method_job_exports_plain_unless_told(tmp_path):
    from conftest import write_model_dir

    from blockprune.cli import main

    write_model_dir(tmp_path)
    args = ["prune", "--model", str(tmp_path / "model"), "--calibration",
            str(tmp_path / "calib.txt"), "--samples", "4", "--seq-len", "16",
            "--method", "sleb", "--num-blocks", "2"]  # fmt: skip
    for extra, model_type in (([], "llama"), (["--general-export"], "blockprune")):
        out = tmp_path / model_type
        assert main([*args, *extra, "--output", str(out)]) == 0
        assert json.loads((out / "config.json").read_text())["model_type"] == model_type
        assert json.loads((out / "pruning.json").read_text())["removed"]  # a layer went
