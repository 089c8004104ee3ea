"""A randomly initialised model of a known shape, saved as safetensors with a tokenizer, for
measuring memory and time where the real weights are out of reach (a GPU machine with no hub).
Memory and FLOPs depend on the shape only, never on the weights' values.

    python bench/random_model.py --shape llama-2-7b --tokenizer DIR --out DIR [--dtype bfloat16]

The vocabulary is the tokenizer's, so any calibration text tokenizes into valid ids.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

SHAPES = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    ),
    "tinyllama-1.1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
    "llama-2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument("--tokenizer", required=True, help="a folder with tokenizer.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the weights are drawn (fast on a GPU)",
    )
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = json.loads((Path(args.tokenizer) / "tokenizer.json").read_text())
    ids = list(tokenizer["model"]["vocab"].values()) + [t["id"] for t in tokenizer["added_tokens"]]
    vocab = max(ids) + 1
    config = LlamaConfig(**SHAPES[args.shape], vocab_size=vocab, max_position_embeddings=4096)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(getattr(torch, args.dtype))
    out = Path(args.out)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(args.tokenizer) / name).is_file():
            shutil.copy(Path(args.tokenizer) / name, out / name)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.shape}: {params:,} parameters, vocab {vocab}, {args.dtype}, saved to {out}")


if __name__ == "__main__":
    main()
