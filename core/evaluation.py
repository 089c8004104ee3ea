"""Perplexity of a whole model (a checkpoint, a builtin, or an exported pruned directory)."""

from __future__ import annotations


def perplexity(
    model_spec: str,
    data: str,
    samples: int,
    seq_len: int,
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
) -> float:
    """PPL of `model_spec` on `samples` x `seq_len` tokens of calibration `data`, by the same
    measure as the search (so an export's PPL equals its search's final PPL)."""
    from core.blocks import BlockModel
    from core.calibration import load_calibration
    from core.models import load_model
    from core.naive import full_pass_ppl

    loaded = load_model(model_spec, device, dtype)
    calibration = load_calibration(data, loaded.tokenizer, samples, seq_len, seed)
    bm = BlockModel(loaded.model)
    return full_pass_ppl(bm, calibration.input_ids.to(bm.device), [])
