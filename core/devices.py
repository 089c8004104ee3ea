"""Where a model runs: one device, or its layers spread over several, accelerate-style.

`--device` takes cpu, cuda, cuda:N, a list (cuda:0,cuda:1 or cuda:0,cpu: layers that do not fit
on the GPU stay on the CPU) or auto (every visible GPU, else the CPU). A spread model is loaded
with a device map: transformers builds it on the meta device and reads each weight straight
onto its device, so a model larger than the CPU's memory never sits there whole. BlockModel
moves each hidden state to the next layer's device as it goes.
"""

from __future__ import annotations

import re

import torch

from contract import UserError
from contract.memory import DEVICE_HELP

_ONE = re.compile(r"cpu|cuda(:\d+)?")


def parse_devices(text: str) -> list[torch.device]:
    """The devices of a --device value, checked against this machine."""
    text = text.strip()
    if text == "auto":
        n = torch.cuda.device_count()
        return [torch.device(f"cuda:{i}") for i in range(n)] or [torch.device("cpu")]
    names = [name.strip() for name in text.split(",")]
    if not names or not all(_ONE.fullmatch(name) for name in names):
        raise UserError("device", f"must be {DEVICE_HELP}; got {text!r}")
    devices = [torch.device("cuda:0" if name == "cuda" else name) for name in names]
    if len(set(devices)) != len(devices):
        raise UserError("device", f"lists a device twice: {text!r}")
    for d in devices:
        if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():
            have = torch.cuda.device_count()
            raise UserError(
                "device", f"{d} requested but this machine has {have or 'no'} CUDA device(s)"
            )
    return devices


def layer_devices(
    num_layers: int, devices: list[torch.device], weights: list[float] | None = None
) -> list[torch.device]:
    """Each layer's device: contiguous runs, sized by `weights` (e.g. free memory), else even."""
    weights = weights or [1.0] * len(devices)
    total = sum(weights)
    placement: list[torch.device] = []
    bound = 0.0
    for device, w in zip(devices, weights, strict=True):
        bound += w / total * num_layers
        placement += [device] * (round(bound) - len(placement))
    return placement + [devices[-1]] * (num_layers - len(placement))


def device_map(
    num_layers: int, devices: list[torch.device], tied: bool, weights: list[float] | None = None
) -> dict[str, str]:
    """A transformers device map: embeddings (and a tied lm_head) on the first device, the final
    norm and an untied lm_head on the last, the layers in between."""
    per_layer = layer_devices(num_layers, devices, weights)
    dmap = {"model.embed_tokens": str(devices[0]), "model.rotary_emb": str(devices[0])}
    dmap.update({f"model.layers.{i}": str(d) for i, d in enumerate(per_layer)})
    dmap["model.norm"] = str(devices[-1])
    dmap["lm_head"] = str(devices[0] if tied else devices[-1])
    return dmap


def place(model: torch.nn.Module, dmap: dict[str, str]) -> None:
    """Move each module of a device map to its device (a tied weight moves with its first)."""
    for name, device in dmap.items():
        model.get_submodule(name).to(device)
