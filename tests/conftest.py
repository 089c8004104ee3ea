"""Shared fixtures: tiny randomly initialised Llama-family models (milliseconds to build)."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach for a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_model(arch: str = "llama", layers: int = 4, seed: int = 0, vocab: int = 97):
    """A tiny random causal LM of the given family, in eval mode, fp32."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
    )
    families = {
        "llama": (LlamaConfig, LlamaForCausalLM, {}),
        # a window shorter than the test sequences, so masks are exercised
        "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 6}),
        "qwen2": (
            Qwen2Config,
            Qwen2ForCausalLM,
            {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
        ),
    }
    torch.manual_seed(seed)
    if arch in families:
        config_cls, model_cls, extra = families[arch]
        model = model_cls(config_cls(**common, **extra)).eval()
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
        config = AutoConfig.for_model(arch, **common, **ids, **MORE_FAMILIES[arch])
        model = AutoModelForCausalLM.from_config(config).eval()
    # Random init gives near-uniform logits; scale up so perplexities differ between blocks.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:  # matrices, and the experts' stacked matrices of a MoE
                p.mul_(4.0)
    return model


# core.families beyond the first four, by model type: what each needs to exercise its quirks.
MORE_FAMILIES: dict[str, dict] = {
    "phi3": {},  # fused qkv_proj and gate_up_proj
    "gemma2": {"sliding_window": 6},  # sandwich norms, soft-capping, alternating windows
    "gemma3_text": {"sliding_window": 6, "sliding_window_pattern": 2},  # local/global rotary
    "olmo2": {},  # norms after the branches
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 6},
    "qwen2_moe": {  # a shared expert; layer 1 a dense MLP
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 32,
        "mlp_only_layers": [1],
    },  # fmt: skip
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16},
}
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe")


def greedy_tokens(bm, prompt: torch.Tensor, removed, steps: int = 8) -> torch.Tensor:
    """Greedy decoding by full recomputation, block by block (a core.blocks.BlockModel with
    `removed` out): what an export's generate() must give."""
    tokens = prompt
    for _ in range(steps):
        logits = bm.forward_logits(tokens, removed)[:, -1]
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens


def tiny_ids(n: int = 6, t: int = 16, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, t), generator=g)


@pytest.fixture(params=["llama", "mistral", "qwen2"])
def arch(request) -> str:
    return request.param


WORDS = [f"w{i}" for i in range(80)]


def word_tokenizer():
    """A tiny word-level tokenizer (83 ids, fits the 97-token tiny models), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "."] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", model_max_length=16
    )


def random_text(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n_words,), generator=g))


# The service stack's fixtures (PostgreSQL database, moto S3, Celery workers, API keys), shared
# by tests/svc/ and tests/security/. Importing it sets the BLOCKPRUNE_* environment for the
# session; nothing starts until a test asks for a fixture. A GPU machine that runs only the
# engine's tests (tests/test_gpu.py) has no service extra: there they are left out.
import importlib.util  # noqa: E402

if importlib.util.find_spec("sqlalchemy") is not None:
    from svc.fixtures import *  # noqa: F403


def write_model_dir(folder: Path, arch: str = "llama", layers: int = 4, calib_words: int = 400):
    """A tiny model with its tokenizer in folder/model, and folder/calib.txt: the local files a
    `blockprune prune` job reads. Returns the model."""
    model = tiny_model(arch, layers=layers)
    model.save_pretrained(folder / "model")
    word_tokenizer().save_pretrained(folder / "model")
    (folder / "calib.txt").write_text(random_text(calib_words))
    return model


def tiny_spec(folder: Path, **fields):
    """A JobSpec for the files `write_model_dir` wrote in `folder`, 4 x 16 calibration tokens."""
    from contract import JobSpec

    base = {"model": str(folder / "model"), "calibration": str(folder / "calib.txt")}
    return JobSpec(**base, samples=4, seq_len=16, **fields)
