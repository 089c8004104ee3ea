"""Perplexity of a whole model (a checkpoint, a builtin, or an exported pruned directory)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from contract import UserError
from contract.memory import LOGITS_CHUNK_BYTES


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


@dataclass
class HeldOut:
    """Perplexity of one model on one token stream."""

    ppl: float
    tokens: int  # tokens scored
    windows: int


def window_starts(n_tokens: int, seq_len: int, stride: int) -> list[int]:
    """Starts of the full windows of `seq_len` tokens, `stride` apart, over `n_tokens` tokens
    (a tail shorter than a stride is left out, as the search leaves out a partial chunk)."""
    return list(range(0, n_tokens - seq_len + 1, stride))


@torch.inference_mode()
def heldout_ppl(
    model: Any, ids: torch.Tensor, seq_len: int, stride: int | None = None, batch_size: int = 8
) -> HeldOut:
    """exp(mean NLL per scored token) of a transformers causal LM on the 1-D token stream `ids`.

    Windows of `seq_len` tokens start every `stride` tokens. The first window scores all its
    next-token predictions; each later one only its last `stride` tokens, which the tokens before
    them in the window serve as context (the sliding-window PPL of transformers' docs). With
    stride == seq_len (the default) the windows are disjoint and this is the search's measure:
    every window has seq_len - 1 predictions, so the mean over tokens is the mean over windows
    of their mean NLL."""
    stride = stride or seq_len
    starts = window_starts(len(ids), seq_len, stride)
    if not starts:
        raise UserError("data", f"{len(ids)} tokens: too few for one window of seq_len {seq_len}")
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    step = max(1, min(batch_size, LOGITS_CHUNK_BYTES // (seq_len * vocab * 4)))
    total, count = 0.0, 0
    for s in range(0, len(starts), step):
        chunk = starts[s : s + step]
        batch = torch.stack([ids[b : b + seq_len] for b in chunk]).to(device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="none"
        ).view(len(chunk), seq_len - 1)
        for row, begin in zip(nll, chunk, strict=True):
            # The first window scores every prediction; a later one, the tokens past the
            # previous window's end: its last `stride` tokens (all of its seq_len - 1
            # predictions when the windows are disjoint: a window's first token has no context).
            new = min(stride, seq_len - 1)
            scored = row if begin == 0 else row[seq_len - 1 - new :]
            total += scored.double().sum().item()
            count += scored.numel()
    return HeldOut(ppl=math.exp(total / count), tokens=count, windows=len(starts))


@dataclass(frozen=True)
class Agreement:
    """How close a pruned model's next-token distributions stay to its base model's."""

    top1: float  # share of positions where both models rank the same token first
    kl: float  # mean KL(base || pruned) per position, in nats
    tokens: int


@torch.inference_mode()
def reference_log_probs(model: Any, ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The base model's next-token log-probabilities on disjoint windows of `ids`, kept in
    float16 ([windows, seq_len, vocab]) for `agreement` to compare pruned models with."""
    starts = window_starts(len(ids), seq_len, seq_len)
    if not starts:
        raise UserError("data", f"{len(ids)} tokens: too few for one window of seq_len {seq_len}")
    device = next(model.parameters()).device
    out = []
    for begin in starts:
        window = ids[begin : begin + seq_len].unsqueeze(0).to(device)
        logits = model(input_ids=window, use_cache=False).logits.float()
        out.append(logits.log_softmax(-1).half().cpu())
    return torch.cat(out)


@torch.inference_mode()
def agreement(
    model: Any, ids: torch.Tensor, seq_len: int, reference: torch.Tensor, batch_size: int = 4
) -> Agreement:
    """`model` (a pruned one) against the base model's `reference_log_probs` on the same
    windows: the share of same top-1 tokens and the mean KL(base || model)."""
    starts = window_starts(len(ids), seq_len, seq_len)
    if len(starts) != len(reference):
        raise ValueError(f"{len(starts)} windows, but the reference has {len(reference)}")
    device = next(model.parameters()).device
    same, kl, count = 0, 0.0, 0
    for s in range(0, len(starts), batch_size):
        batch = torch.stack([ids[b : b + seq_len] for b in starts[s : s + batch_size]])
        ours = model(input_ids=batch.to(device), use_cache=False).logits.float().log_softmax(-1)
        base = reference[s : s + batch_size].float().to(device)
        same += (base.argmax(-1) == ours.argmax(-1)).sum().item()
        kl += F.kl_div(ours, base, log_target=True, reduction="sum").item()
        count += base.shape[0] * base.shape[1]
    return Agreement(top1=same / count, kl=kl / count, tokens=count)
