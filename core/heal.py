"""Training-free healing of a pruned model: one least-squares linear map per removed span,
folded into the weights that stay (after ReplaceMe, arXiv 2505.02819).

A span is a run of removed block positions p..q. The residual stream entering it is h = g + y,
where y is the branch output of the kept block just before it (position p-1: its attention's
o_proj or its MLP's down_proj) and g the stream before that block. The original blocks p..q
would have added d = h_out - h. Healing replaces y by y T, with

    T = argmin_T  sum over calibration tokens of |y T - (y + d)|^2  + ridge |T - I|^2,

in closed form, and folds T into that projection: y = x W^T + b becomes y T = x (T^T W)^T + b T.
The healed model is the same architecture with other numbers in one matrix per span, so every
loader of the export reads it. Spans are healed in forward order, each on the stream of the
model with the earlier spans already healed. A span at position 0 has no block before it and is
left as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from contract import Block, UserError
from core.blocks import BlockModel

RIDGE = 1e-3  # of the mean eigenvalue of y's second moment: pulls T towards the identity


@dataclass(frozen=True)
class HealedSpan:
    removed: list[Block]  # the span's blocks, in forward order
    into: Block  # the kept block whose output projection took the map
    error_before: float  # mean squared error of the stream after the span, unhealed
    error_after: float  # and healed, on the calibration tokens

    def to_json(self) -> dict:
        return {
            "removed": [str(b) for b in self.removed],
            "into": str(self.into),
            "error_before": self.error_before,
            "error_after": self.error_after,
        }


def spans(bm: BlockModel, removed: Sequence[Block]) -> list[list[int]]:
    """The removed positions as runs of consecutive positions, in forward order."""
    out: list[list[int]] = []
    for p in sorted(bm.position(b) for b in removed):
        if out and out[-1][-1] == p - 1:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def output_projection(bm: BlockModel, block: Block) -> nn.Linear:
    """The linear layer that writes `block`'s branch output into the residual stream."""
    branch = bm.branch(block)
    linear = getattr(branch, "o_proj" if block.kind == "mha" else "down_proj", None)
    if not isinstance(linear, nn.Linear) or bm.family.parts(block.kind).post is not None:
        raise UserError(
            "heal",
            f"healing folds its map into the output projection of the block before a removed "
            f"span; {block} of this {bm.config.model_type} model has no plain one "
            "(a mixture of experts, or a norm after the branch)",
        )
    return linear


@torch.inference_mode()
def heal(
    bm: BlockModel,
    input_ids: torch.Tensor,
    removed: Sequence[Block],
    batch_size: int | None = None,
) -> list[HealedSpan]:
    """Fold a least-squares map for each removed span into the model's weights, in place."""
    skip = {bm.position(b) for b in removed}
    step = batch_size or len(input_ids)
    chunks = [input_ids[s : s + step] for s in range(0, len(input_ids), step)]
    healed = []
    for span in spans(bm, removed):
        before = span[0] - 1
        if before < 0:
            continue
        d = bm.config.hidden_size
        moment = torch.zeros(d, d, dtype=torch.float64)
        cross = torch.zeros(d, d, dtype=torch.float64)
        error_before, count = 0.0, 0
        for ids in chunks:
            h = bm.embed(ids)
            for pos in range(before):
                if pos not in skip:
                    h = bm.run_block(pos, h)
            entering = bm.run_block(before, h)
            y = (entering - h).flatten(0, 1).double()
            out = entering
            for pos in span:
                out = bm.run_block(pos, out)
            target = y + (out - entering).flatten(0, 1).double()
            moment += (y.T @ y).cpu()
            cross += (y.T @ target).cpu()
            error_before += (target - y).pow(2).sum().item()
            count += y.shape[0]
        ridge = RIDGE * moment.diagonal().mean()
        eye = torch.eye(d, dtype=torch.float64)
        t = torch.linalg.solve(moment + ridge * eye, cross + ridge * eye)
        # |yT - target|^2 summed = tr(T^T M T) - 2 tr(T^T C) + |target|^2: the last term is
        # |y + d|^2, which error_before's expansion gives back without a second pass.
        target_sq = error_before + 2 * torch.trace(cross).item() - torch.trace(moment).item()
        error_after = (
            torch.trace(t.T @ moment @ t).item() - 2 * torch.trace(t.T @ cross).item() + target_sq
        )
        _fold(output_projection(bm, Block.at(before)), t)
        healed.append(
            HealedSpan(
                removed=[Block.at(p) for p in span],
                into=Block.at(before),
                error_before=error_before / count,
                error_after=error_after / count,
            )
        )
    return healed


def _fold(linear: nn.Linear, t: torch.Tensor) -> None:
    """y = x W^T + b  ->  y T = x (T^T W)^T + b T."""
    t = t.to(linear.weight.device)
    weight = (t.T @ linear.weight.double()).to(linear.weight.dtype)
    linear.weight.copy_(weight)
    if linear.bias is not None:
        linear.bias.copy_((linear.bias.double() @ t).to(linear.bias.dtype))


Weights = list[tuple[nn.Linear, torch.Tensor, torch.Tensor | None]]


def _snapshot(linears: Sequence[nn.Linear]) -> Weights:
    """Copies of the weights (and biases) of `linears`, for `_load` to put back."""
    return [
        (lin, lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone())
        for lin in linears
    ]


def _load(weights: Weights) -> None:
    with torch.no_grad():
        for lin, weight, bias in weights:
            lin.weight.copy_(weight)
            if bias is not None:
                lin.bias.copy_(bias)


@contextmanager
def healed(
    bm: BlockModel, input_ids: torch.Tensor, removed: Sequence[Block], batch_size: int | None = None
) -> Iterator[list[HealedSpan]]:
    """The model healed for `removed` inside the `with`, its weights restored after (also on an
    error): an evaluation can measure the base model, then the healed one."""
    before = [Block.at(span[0] - 1) for span in spans(bm, removed) if span[0] > 0]
    saved = _snapshot([output_projection(bm, b) for b in before])
    try:
        yield heal(bm, input_ids, removed, batch_size)
    finally:
        _load(saved)


@dataclass
class Healing:
    """Healed weights, fitted once and swapped in by `applied` as long as a `with` lasts (an
    evaluation measures the base model and the healed pruned one in turns)."""

    spans: list[HealedSpan]
    weights: Weights = field(repr=False)

    def to_json(self) -> dict:
        """What pruning.json records of it."""
        return {"method": "least-squares map per removed span (after ReplaceMe)", "ridge": RIDGE,
                "spans": [s.to_json() for s in self.spans]}  # fmt: skip


def fit_healing(
    bm: BlockModel, input_ids: torch.Tensor, removed: Sequence[Block], batch_size: int | None = None
) -> Healing:
    """The healed weights for `removed`, fitted on `input_ids`; the model is left as it was."""
    with healed(bm, input_ids, removed, batch_size) as done:
        weights = _snapshot([output_projection(bm, span.into) for span in done])
    return Healing(done, weights)


@contextmanager
def applied(healing: Healing | None) -> Iterator[None]:
    """The model with `healing`'s weights inside the `with` (None: as it is), restored after."""
    if healing is None:
        yield
        return
    saved = _snapshot([lin for lin, _, _ in healing.weights])
    try:
        _load(healing.weights)
        yield
    finally:
        _load(saved)
