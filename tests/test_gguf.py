"""`blockprune export-gguf`: llama.cpp itself loads the file and computes what the export
computes (core.export.load_pruned), for every way a layer can be pruned.

The measure is max |logit difference| / std of the transformers logits, over every position.
f16 (measured: 5e-3 on the tiny model, 7e-3 on SmolLM2): the weights are rounded to half
precision, and llama.cpp's CPU kernels round the activations to f16 for those products too; 0.02
leaves room for other CPUs. q8_0 (measured: 0.15 and 0.23): rounding SmolLM2's weights alone to
q8_0 in transformers moves its logits by 0.15, and llama.cpp quantises the activations to 8 bits
as well; 0.5 leaves room. A structural mistake is far above both: dropping one kept attention
block, what llama.cpp does with a width-0 FFN, gives 4.8 on the tiny model.
"""

import importlib.util
import json
from contextlib import closing

import gguf
import numpy as np
import pytest
import torch
from conftest import tiny_model

from blockprune.cli import main
from contract import UserError
from core.export import export_pruned, load_pruned
from core.export.gguf import export_gguf
from core.export.gguf_vocab import bpe_pre_name

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed: pip install -e '.[gguf]' "
    "(scripts/test.sh installs it)",
)
RECORD = dict(base_ppl=10.0, calibration={"source": "test"}, seed=0)
# Every case llama.cpp's deci graph has to get right: layer 0's attention removed (written as a
# zero linear attention), an MLP removed (a zero FFN), a layer with both removed (dropped), an
# attention removed further on (0 heads), and the last layer's MLP removed.
REMOVED = [
    {"block": "mha", "layer": 0, "ppl": 11.0},
    {"block": "mlp", "layer": 1, "ppl": 12.0},
    {"block": "mha", "layer": 2, "ppl": 13.0},
    {"block": "mlp", "layer": 2, "ppl": 14.0},
    {"block": "mha", "layer": 3, "ppl": 15.0},
    {"block": "mlp", "layer": 5, "ppl": 16.0},
]
TOLERANCE = {"f16": 0.02, "q8_0": 0.5}
TEXT = ["the quick brown fox jumps over the lazy dog", "pruning removes 12 blocks of 345 layers!"]


def bpe_tokenizer(vocab: int = 290):
    """A byte-level BPE tokenizer (GPT-2 style), trained offline on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    # vocab 300 > the tokenizer's 290 ids: the GGUF pads the vocabulary as llama.cpp's converter
    model = tiny_model("llama", layers=6, vocab=300)
    out = tmp_path_factory.mktemp("gguf") / "tiny"
    return export_pruned(model, bpe_tokenizer(), REMOVED, out, **RECORD)


def llama_cpp_logits(path, ids: list[int], every_position: bool = True) -> np.ndarray:
    """llama.cpp's logits for `ids`: at every position, or (as when generating) at the last."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path), logits_all=every_position, n_ctx=64, n_threads=2, verbose=False
    )
    with closing(llm):
        llm.eval(ids)
        if every_position:
            return np.array(llm.scores[: len(ids)], dtype=np.float64)
        # llama-cpp-python keeps no scores then: read the last position's from llama.cpp
        last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(last, shape=(1, llm.n_vocab())).astype(np.float64)


def transformers_logits(directory, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return load_pruned(directory)(torch.tensor([ids])).logits[0].double().numpy()


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / reference.std())


def test_the_file_describes_each_layer_as_llama_cpp_needs(tiny_export, tmp_path):
    path = export_gguf(tiny_export, tmp_path / "tiny.gguf", "q8_0")
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "deci"
    assert fields["deci.block_count"] == 5  # layer 2 had both blocks removed
    assert fields["deci.attention.head_count"] == [4, 4, 0, 4, 4]  # layer 0: zero linear attn
    assert fields["deci.attention.head_count_kv"] == [0, 2, 0, 2, 2]
    assert fields["deci.feed_forward_length"] == [48, 32, 48, 48, 32]  # 32: a zero FFN
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(fields["tokenizer.ggml.tokens"]) == 300
    tensors = {t.name: t for t in reader.tensors}
    assert "blk.0.attn_q.weight" not in tensors and "blk.2.attn_norm.weight" not in tensors
    assert not tensors["blk.0.attn_output.weight"].data.any()  # quantised zeros: all-zero bytes
    assert tensors["blk.1.ffn_gate.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    # 48-long rows do not split into q8_0's blocks of 32: f16 instead
    assert tensors["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


@needs_llama_cpp
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_llama_cpp_computes_the_pruned_model(tiny_export, tmp_path, gguf_type):
    path = export_gguf(tiny_export, tmp_path / f"tiny-{gguf_type}.gguf", gguf_type)
    ids = [5, 17, 123, 42, 8, 250, 77, 3, 199, 64, 31, 120, 9, 288, 15, 100]
    reference = transformers_logits(tiny_export, ids)
    error = relative_error(llama_cpp_logits(path, ids), reference)
    print(f"tiny llama {gguf_type}: max |diff| / std = {error:.2e}")
    assert error < TOLERANCE[gguf_type]
    # generating computes the last position alone, a different path through the last layer
    last = llama_cpp_logits(path, ids, every_position=False)
    assert relative_error(last, reference[-1:]) < TOLERANCE[gguf_type]


def assert_same_tokens(path, directory, texts: list[str]) -> None:
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(directory, trust_remote_code=True)  # as README says
    with closing(Llama(model_path=str(path), vocab_only=True, verbose=False)) as llm:
        for text in texts:
            # add_bos: the file's add-BOS flag; special: parse special tokens, as transformers
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == hf(text)["input_ids"]


@needs_llama_cpp
def test_llama_cpp_tokenizes_like_the_export(tiny_export, tmp_path):
    path = export_gguf(tiny_export, tmp_path / "tiny.gguf", "f16")
    assert_same_tokens(path, tiny_export, [*TEXT, "unseen: 2024, émigré<|endoftext|>\n\n  x"])


@needs_llama_cpp
@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_other_llama_family_models(arch, tmp_path):
    # their tiny configs slide a 6-token window: 6 tokens attend to the same as full attention,
    # which is all llama.cpp does for them
    model = tiny_model(arch, layers=4, vocab=300)
    removed = [{"block": "mlp", "layer": 1, "ppl": 11.0}, {"block": "mha", "layer": 2, "ppl": 12.0}]
    directory = export_pruned(model, bpe_tokenizer(), removed, tmp_path / arch, **RECORD)
    path = export_gguf(directory, tmp_path / f"{arch}.gguf", "f16")
    ids = [5, 17, 123, 42, 8, 250]
    error = relative_error(llama_cpp_logits(path, ids), transformers_logits(directory, ids))
    assert error < TOLERANCE["f16"], arch


@needs_llama_cpp
def test_llama3_rope_scaling(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,  # the middle frequencies get scaled
    }
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=128,
        rope_parameters=rope,
        rope_scaling=rope,  # transformers 4 reads this one
    )
    model = LlamaForCausalLM(config).eval()
    removed = [{"block": "mlp", "layer": 1, "ppl": 11.0}]
    directory = export_pruned(model, bpe_tokenizer(), removed, tmp_path / "llama3", **RECORD)
    path = export_gguf(directory, tmp_path / "llama3.gguf", "f16")
    ids = list(range(3, 300, 7))[:40]
    error = relative_error(llama_cpp_logits(path, ids), transformers_logits(directory, ids))
    assert error < TOLERANCE["f16"]


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    assert bpe_pre_name(byte_level) == "gpt-2"
    assert bpe_pre_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    assert bpe_pre_name({**byte_level, "add_prefix_space": True}) is None
    assert bpe_pre_name({"type": "Whitespace"}) is None


def test_mistakes_are_user_errors(tiny_export, tmp_path):
    with pytest.raises(UserError, match="type: expected one of f16, q8_0"):
        export_gguf(tiny_export, tmp_path / "x.gguf", "q4_0")
    with pytest.raises(UserError, match="not a BlockPrune export"):
        export_gguf(tmp_path, tmp_path / "x.gguf", "f16")
    config = json.loads((tiny_export / "config.json").read_text())
    qwen3 = tmp_path / "qwen3"
    qwen3.mkdir()
    (qwen3 / "config.json").write_text(json.dumps({**config, "base_model_type": "qwen3"}))
    with pytest.raises(UserError, match="base_model_type: 'qwen3' cannot be written"):
        export_gguf(qwen3, tmp_path / "x.gguf", "f16")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))


def test_tokenizers_llama_cpp_lacks_are_refused(tmp_path):
    from conftest import word_tokenizer

    for name, tokenizer, message in [
        ("none", None, "has no tokenizer.json"),
        ("words", word_tokenizer(), "a WordLevel tokenizer"),
    ]:
        directory = export_pruned(tiny_model("llama"), tokenizer, [], tmp_path / name, **RECORD)
        with pytest.raises(UserError, match=message):
            export_gguf(directory, tmp_path / f"{name}.gguf", "f16")


def test_cli(tiny_export, tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    assert main(["export-gguf", str(tiny_export), str(out), "--type", "q8_0"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert main(["export-gguf", str(tiny_export), str(out), "--type", "bf16"]) == 2
    assert "type: expected one of f16, q8_0" in capsys.readouterr().err


@pytest.mark.slow
@needs_llama_cpp
def test_smollm2(tmp_path):
    from core.models import load_model

    loaded = load_model("builtin:smollm2-135m")
    removed = [{"block": "mlp", "layer": 5, "ppl": 1.0}, {"block": "mha", "layer": 7, "ppl": 1.0}]
    directory = export_pruned(loaded.model, loaded.tokenizer, removed, tmp_path / "smol", **RECORD)
    prompt = "The capital of France is Paris. The capital of Germany is"
    ids = loaded.tokenizer(prompt)["input_ids"]
    del loaded
    reference = transformers_logits(directory, ids)
    for gguf_type in ("f16", "q8_0"):
        path = export_gguf(directory, tmp_path / f"smol-{gguf_type}.gguf", gguf_type)
        logits = llama_cpp_logits(path, ids)
        error = relative_error(logits, reference)
        agree = float((logits.argmax(-1) == reference.argmax(-1)).mean())
        print(f"SmolLM2 {gguf_type}: max |diff| / std = {error:.2e}, top-1 agreement {agree:.2f}")
        assert error < TOLERANCE[gguf_type]
        assert logits[-1].argmax() == reference[-1].argmax()  # " Berlin"
    texts = [prompt, "Digits 12345 and 3.14159, émigré: 'quoted'!\n\n  two spaces"]
    assert_same_tokens(path, directory, [*texts, "<|im_start|>user\nhi<|im_end|>"])
