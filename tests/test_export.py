"""Export of a pruned model: the directory loads with stock transformers (remote code) and with
core's loader, and both compute exactly what the in-memory pruned model computes."""

import copy
import inspect
import json

import pytest
import torch
from conftest import greedy_tokens, tiny_ids, tiny_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import core
from contract import Block, UserError
from core.blocks import BlockModel
from core.export import export_pruned, load_pruned

# Layer 1 loses both blocks (dropped); layer 0 keeps only its MLP, layer 3 only its attention.
REMOVED = [
    {"block": "mha", "layer": 1, "ppl": 11.5},
    {"block": "mlp", "layer": 3, "ppl": 12.25},
    {"block": "mlp", "layer": 1, "ppl": 13.0},
    {"block": "mha", "layer": 0, "ppl": 14.75},
]
RECORD = dict(base_ppl=10.0, calibration={"dataset": "tiny", "samples": 6, "seq_len": 16}, seed=7)


def build_model(arch: str, **overrides):
    """conftest's tiny models, plus Qwen3 and variants (e.g. tied embeddings) built the same way."""
    if arch != "qwen3" and not overrides:
        return tiny_model(arch)
    from transformers import AutoConfig, AutoModelForCausalLM

    base = tiny_model("qwen2" if arch == "qwen3" else arch).config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        base.pop(key, None)
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, **{**base, **overrides})
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


def zeroed_copy(model, removed: list[dict]):
    """The original model with each removed block's output projection zeroed."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for r in removed:
            layer = zeroed.model.layers[r["layer"]]
            proj = layer.self_attn.o_proj if r["block"] == "mha" else layer.mlp.down_proj
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()
    return zeroed


def load_both(path):
    """The export through core's loader and through stock transformers' remote code, each in the
    stored dtype (`dtype="auto"`: transformers 4 loads float32 by default, 5 the stored one)."""
    from transformers import AutoModelForCausalLM

    remote = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype="auto")
    return {"core": load_pruned(path), "remote": remote.eval()}


def stored_names(path) -> set[str]:
    names: set[str] = set()
    for file in path.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            names |= set(f.keys())
    return names


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_export_computes_the_pruned_model(arch, tmp_path):
    model = build_model(arch)
    out = export_pruned(model, None, REMOVED, tmp_path / f"{arch}-export", **RECORD)
    ids = tiny_ids()
    expected = BlockModel(model).forward_logits(ids, [Block.parse(r) for r in REMOVED])
    with torch.no_grad():
        zeroed = zeroed_copy(model, REMOVED)(ids).logits
        original = model(ids).logits
    assert torch.allclose(zeroed, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(original, expected, atol=1e-3)  # the removal does change the model
    for name, loaded in load_both(out).items():
        with torch.no_grad():
            logits = loaded(ids).logits
        assert torch.allclose(logits, expected, atol=1e-5, rtol=0), name
        assert loaded.config.num_hidden_layers == 3, name

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "blockprune" and config["base_model_type"] == arch
    assert config["num_hidden_layers"] == 3
    assert config["block_configs"] == [
        {"attention": {"no_op": True}, "ffn": {"no_op": False}},  # layer 0
        {"attention": {"no_op": False}, "ffn": {"no_op": False}},  # layer 2
        {"attention": {"no_op": False}, "ffn": {"no_op": True}},  # layer 3
    ]
    if arch in ("qwen2", "qwen3"):
        original_types = model.config.layer_types
        assert config["layer_types"] == [original_types[i] for i in (0, 2, 3)]
    assert config["hidden_size"] == model.config.hidden_size  # base fields kept

    names = stored_names(out)
    assert not any(n.startswith("model.layers.3.") for n in names)  # the dropped layer is gone
    assert not any(
        n.startswith(("model.layers.0.self_attn.", "model.layers.0.input_")) for n in names
    )
    assert not any(n.startswith(("model.layers.2.mlp.", "model.layers.2.post_")) for n in names)
    assert "model.layers.0.mlp.down_proj.weight" in names
    assert "model.layers.2.self_attn.o_proj.weight" in names
    # kept weights are the original layers' weights, renumbered
    stored = load_file(out / "model.safetensors")
    assert torch.equal(
        stored["model.layers.1.self_attn.q_proj.weight"],
        model.model.layers[2].self_attn.q_proj.weight,
    )

    pruning = json.loads((out / "pruning.json").read_text())
    block_model = BlockModel(model)
    assert pruning["removed"] == REMOVED
    assert pruning["kept_layers"] == [0, 2, 3]
    assert pruning["base_ppl"] == 10.0 and pruning["final_ppl"] == 14.75
    assert pruning["params_before"] == block_model.total_params()
    assert pruning["params_after"] == sum(t.numel() for t in stored.values())
    assert pruning["params_after"] < pruning["params_before"]
    assert pruning["calibration"] == RECORD["calibration"] and pruning["seed"] == 7
    assert pruning["engine_version"] == core.__version__


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_generate_matches_the_zeroed_original(arch, tmp_path):
    """With and without a KV cache, unpadded and left-padded, past the sliding window (6 tokens;
    Mistral slides on every layer, Qwen on all but layer 0): the removed attention of layers 0
    and 1 must not shift positions or masks."""
    model = build_model(arch)
    out = export_pruned(model, None, REMOVED, tmp_path / f"{arch}-gen", **RECORD)
    blocks = [Block.parse(r) for r in REMOVED]
    # Unpadded: greedy decoding equals full recomputation by BlockModel.
    prompt = tiny_ids()[:2, :5]
    expected = greedy_tokens(BlockModel(model), prompt, blocks)
    # Left-padded: the cache lengths and masks must skip the removed attention of layer 0.
    padded = tiny_ids()[:2, :7].clone()
    mask = torch.ones_like(padded)
    padded[0, :3], mask[0, :3] = 0, 0
    reference = zeroed_copy(model, REMOVED).generate(
        padded, attention_mask=mask, max_new_tokens=8, do_sample=False
    )
    for name, loaded in load_both(out).items():
        for use_cache in (True, False):
            case = f"{name}, use_cache={use_cache}"
            tokens = loaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=use_cache)
            assert torch.equal(tokens, expected), case
            tokens = loaded.generate(
                padded, attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=use_cache
            )
            assert torch.equal(tokens, reference), case


def test_removed_attention_keeps_its_cache_slot_counting_at_one_number_per_token(tmp_path):
    from transformers import DynamicCache

    model = build_model("qwen2")  # layer 0 full attention, layers 1-3 sliding (window 6)
    out = export_pruned(model, None, REMOVED, tmp_path / "slots", **RECORD)
    loaded = load_pruned(out)
    prompt = tiny_ids()[:2, :12]
    cache = DynamicCache(config=loaded.config)
    # transformers 5 renamed `past_key_values` to `cache`
    name = "cache" if "cache" in inspect.signature(loaded.forward).parameters else "past_key_values"
    with torch.no_grad():
        loaded(prompt, use_cache=True, **{name: cache})
    assert [cache.get_seq_length(i) for i in range(3)] == [12, 12, 12]
    removed, kept = cache.layers[0], cache.layers[1]
    assert removed.keys.shape == (2, 1, 12, 1)  # one number per token, not heads x head_dim
    heads, head_dim = kept.keys.shape[1], kept.keys.shape[3]
    assert heads * head_dim == 2 * 8, kept.keys.shape  # tiny models: 2 KV heads of 8


def test_static_cache_generates_like_the_dynamic_one(tmp_path):
    model = build_model("llama")
    out = export_pruned(model, None, REMOVED, tmp_path / "static", **RECORD)
    prompt = tiny_ids()[:2, :5]
    for name, loaded in load_both(out).items():
        dynamic = loaded.generate(prompt, max_new_tokens=6, do_sample=False)
        static = loaded.generate(
            prompt, max_new_tokens=6, do_sample=False, cache_implementation="static"
        )
        assert torch.equal(static, dynamic), name


def test_every_attention_removed_still_generates(tmp_path):
    model = build_model("llama")
    removed = [{"block": "mha", "layer": i, "ppl": 20.0 + i} for i in range(4)]
    out = export_pruned(model, None, removed, tmp_path / "no-attention", **RECORD)
    prompt = tiny_ids()[:2, :5]
    reference = zeroed_copy(model, removed).generate(prompt, max_new_tokens=6, do_sample=False)
    for name, loaded in load_both(out).items():
        assert torch.equal(loaded.generate(prompt, max_new_tokens=6, do_sample=False), reference)
        assert not any(n.startswith("model.layers.0.self_attn") for n in loaded.state_dict()), name


def test_the_export_is_readable_by_others_as_the_umask_allows(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        out = export_pruned(build_model("llama"), None, REMOVED, tmp_path / "modes", **RECORD)
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert "model.safetensors" in modes  # safetensors writes it owner-only (0600) by itself
    assert set(modes.values()) == {0o644}, modes


def test_sharded_export_loads(tmp_path):
    model = build_model("qwen2")
    out = export_pruned(model, None, REMOVED, tmp_path / "sharded", max_shard_size="8KB", **RECORD)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert set(index["weight_map"]) == stored_names(out)
    ids = tiny_ids()
    expected = BlockModel(model).forward_logits(ids, [Block.parse(r) for r in REMOVED])
    for name, loaded in load_both(out).items():
        with torch.no_grad():
            assert torch.allclose(loaded(ids).logits, expected, atol=1e-5, rtol=0), name


def test_tied_embeddings_round_trip(tmp_path):
    model = build_model("llama", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    out = export_pruned(model, None, REMOVED, tmp_path / "tied", **RECORD)
    assert "lm_head.weight" not in stored_names(out)
    ids = tiny_ids()
    expected = BlockModel(model).forward_logits(ids, [Block.parse(r) for r in REMOVED])
    for name, loaded in load_both(out).items():
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
        with torch.no_grad():
            assert torch.allclose(loaded(ids).logits, expected, atol=1e-5, rtol=0), name


def test_weights_keep_their_dtype(tmp_path):
    model = build_model("llama").to(torch.bfloat16)
    out = export_pruned(model, None, REMOVED, tmp_path / "bf16", **RECORD)
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    for name, loaded in load_both(out).items():
        assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}, name
    upcast = load_pruned(out, dtype=torch.float32)
    assert torch.equal(
        upcast.model.layers[0].mlp.up_proj.weight,
        model.model.layers[0].mlp.up_proj.weight.float(),
    )


def test_tokenizer_model_card_and_modeling_code(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(97)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", eos_token="w1")
    model = build_model("mistral")
    source = {"model": "org/tiny-mistral", "revision": "abc123"}
    out = export_pruned(model, tokenizer, REMOVED, tmp_path / "card", source=source, **RECORD)

    loaded = load_pruned(out)
    assert AutoTokenizer.from_pretrained(out, config=loaded.config)("w5 w9").input_ids == [5, 9]
    code = (out / "modeling_blockprune.py").read_text()
    assert "import MistralForCausalLM as BaseForCausalLM" in code
    assert "BASE_MODEL_TYPE = 'mistral'" in code and "LlamaForCausalLM" not in code
    card = (out / "README.md").read_text()
    assert 'base_model: "org/tiny-mistral"' in card
    assert "| 2 | mlp | 3 | 12.2500 |" in card  # the removal table, in order
    assert "10.0000 | 14.7500" in card  # calibration perplexity before | after
    assert f"BlockPrune {core.__version__}" in card
    assert "trust_remote_code=True" in card and "load_pruned(" in card
    assert json.loads((out / "pruning.json").read_text())["base_model"] == source


def test_stock_transformers_without_remote_code_refuses(tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(dynamic, "TIME_OUT_REMOTE_CODE", 0)  # never wait on an interactive prompt
    out = export_pruned(build_model("llama"), None, REMOVED, tmp_path / "stock", **RECORD)
    for trust in (None, False):
        with pytest.raises(ValueError, match="trust_remote_code"):
            AutoModelForCausalLM.from_pretrained(out, trust_remote_code=trust)


def test_refuses_non_empty_out_dir_unless_overwrite(tmp_path):
    model = build_model("llama")
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError) as err:
        export_pruned(model, None, REMOVED, out, **RECORD)
    assert err.value.field == "out_dir" and err.value.code == "out_dir_not_empty"
    assert (out / "keep.txt").read_text() == "mine"

    export_pruned(model, None, REMOVED, out, overwrite=True, **RECORD)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no temp or old dirs left

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_pruned(model, None, REMOVED, empty, **RECORD) / "config.json").exists()


@pytest.mark.parametrize(
    ("removed", "field"),
    [
        (REMOVED[:1] + [{"block": "attn", "layer": 1, "ppl": 1.0}], "removed[1]"),
        ([{"block": "mha", "layer": 4, "ppl": 1.0}], "removed[0]"),
        (REMOVED[:2] + REMOVED[:1], "removed[2]"),
        ([{"block": "mlp", "layer": 0, "ppl": float("nan")}], "removed[0].ppl"),
        ([{"block": "mlp", "layer": 0}], "removed[0].ppl"),
    ],
)
def test_bad_removed_entry_is_named_and_leaves_nothing(removed, field, tmp_path):
    with pytest.raises(UserError) as err:
        export_pruned(build_model("llama"), None, removed, tmp_path / "out", **RECORD)
    assert err.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_bad_record_fields_are_named(tmp_path):
    model = build_model("llama")
    for kwargs, field in [
        ({**RECORD, "seed": "7"}, "seed"),
        ({**RECORD, "base_ppl": float("inf")}, "base_ppl"),
        ({**RECORD, "calibration": {"texts": object()}}, "calibration"),
        ({**RECORD, "max_shard_size": "lots"}, "max_shard_size"),
    ]:
        with pytest.raises(UserError) as err:
            export_pruned(model, None, REMOVED, tmp_path / "out", **kwargs)
        assert err.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_partial_export(tmp_path, monkeypatch):
    import core.export.writer

    model = build_model("llama")
    previous = export_pruned(model, None, REMOVED[:1], tmp_path / "out", **RECORD)

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(core.export.writer, "render_model_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):
        export_pruned(model, None, REMOVED, tmp_path / "fresh", **RECORD)
    with pytest.raises(RuntimeError, match="disk full"):
        export_pruned(model, None, REMOVED, previous, overwrite=True, **RECORD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((previous / "pruning.json").read_text())["removed"] == REMOVED[:1]


def test_loader_is_strict_about_weights_and_config(tmp_path):
    out = export_pruned(build_model("llama"), None, REMOVED, tmp_path / "strict", **RECORD)
    weights = out / "model.safetensors"
    original = load_file(weights)

    fewer = dict(original)
    del fewer["model.layers.1.mlp.up_proj.weight"]
    save_file(fewer, weights)
    with pytest.raises(UserError, match="missing"):
        load_pruned(out)

    extra = {**original, "model.layers.0.self_attn.o_proj.weight": torch.zeros(32, 32)}
    save_file(extra, weights)
    with pytest.raises(UserError, match="unexpected"):
        load_pruned(out)

    save_file(original, weights)
    config = json.loads((out / "config.json").read_text())
    config["block_configs"] = config["block_configs"][:2]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="block_configs"):
        load_pruned(out)
    config["model_type"] = "llama"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="not a BlockPrune export"):
        load_pruned(out)


def test_refuses_an_already_pruned_model(tmp_path):
    out = export_pruned(build_model("llama"), None, REMOVED, tmp_path / "once", **RECORD)
    with pytest.raises(UserError, match="already pruned"):
        export_pruned(load_pruned(out), None, [], tmp_path / "twice", **RECORD)
