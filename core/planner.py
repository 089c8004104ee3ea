"""Will a search fit, and how long will an iteration take? The machine's side of the planner.

contract.memory has the arithmetic (pure Python, shared with the API's submit check); here are
the machine's facts it needs: the devices' free memory and their measured throughput (`blockprune
plan`, in core.cli, prints them). `prune` calls `choose_budget` before it loads a single weight,
so a setting that cannot fit is refused at once with the sums, instead of failing an hour in
with an out-of-memory error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from contract import UserError
from contract.memory import HEADROOM, Capacity, ModelShape


def read_shape(model_dir: Path) -> ModelShape:
    try:
        return ModelShape.from_config(json.loads((model_dir / "config.json").read_text()))
    except (OSError, ValueError) as e:
        raise UserError("model", f"cannot plan: unreadable config.json ({e})") from None


def available_ram() -> int:
    """MemAvailable: what the kernel can give without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise UserError("device", "cannot read MemAvailable from /proc/meminfo")


def capacity(devices: list[torch.device]) -> Capacity:
    """Free memory of the devices a model is placed on (summed where it spans several)."""
    ram = available_ram()
    if all(d.type == "cpu" for d in devices):
        return Capacity("cpu", int(ram * (1 - HEADROOM)), 0)
    free = sum(torch.cuda.mem_get_info(d)[0] for d in {d for d in devices if d.type == "cuda"})
    names = ",".join(str(d) for d in devices)
    return Capacity(names, int(free * (1 - HEADROOM)), int(ram * 0.5), "cuda")


def measured_flops(
    device: torch.device, dtype: torch.dtype, shape: ModelShape, seq_len: int
) -> tuple[float, float]:
    """Achieved FLOP/s of (a decoder layer, the lm_head with its cross-entropy) of this shape on
    this device, each timed for about half a second on a chunk of random hidden states: the
    norms, softmaxes and copies a FLOP count leaves out are in the time."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        num_hidden_layers=1,
        vocab_size=shape.vocab,
        max_position_embeddings=max(seq_len, 2),
    )
    config._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(config, 0).to(device, dtype).eval()
    rotary = LlamaRotaryEmbedding(config).to(device)
    head = torch.nn.Linear(shape.hidden, shape.vocab, bias=False).to(device, dtype)
    b = max(1, 2048 // seq_len)
    h = torch.randn(b, seq_len, shape.hidden, device=device, dtype=dtype)
    rope = rotary(h, torch.arange(seq_len, device=device)[None])
    mask = torch.full((seq_len, seq_len), torch.finfo(dtype).min, device=device, dtype=dtype)
    mask = mask.triu(1)[None, None]
    targets = torch.randint(0, shape.vocab, (b * seq_len,), device=device)

    def decoder() -> None:
        layer(h, position_embeddings=rope, attention_mask=mask)

    def lm_head() -> None:
        logits = head(h).float().flatten(0, 1)
        torch.nn.functional.cross_entropy(logits, targets)

    tokens = b * seq_len
    layer_flops = shape.block_flops("mha", tokens, seq_len) + shape.block_flops(
        "mlp", tokens, seq_len
    )
    with torch.inference_mode():
        return (
            layer_flops / _seconds(decoder, device),
            shape.head_flops(tokens) / _seconds(lm_head, device),
        )


def _seconds(step, device: torch.device) -> float:
    """Seconds per call of `step` (after a warm-up), over about half a second."""
    step()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < 0.5 or n < 2:
        step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / n
