"""Memory arithmetic of a search: what the model, the activation cache and the working tensors
take, and which cached positions a budget keeps. Pure Python on a model's config.json, so the
engine (which lays out its cache with `cache_layout`), the CLI's `plan` and the API's submit
check (which has no torch) all use the same figures.

A search keeps the input of block positions 1..2L-1 for the whole calibration batch (position 0,
the embeddings, is recomputed: a lookup costs nothing). A candidate at position p restarts from
the nearest kept position at or before p. Under a budget only every k-th position is kept, so a
candidate also recomputes the blocks between that kept position and p. Results do not change:
every block still sees exactly the tensors it would see in a full pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.errors import UserError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The engine caps one lm_head output chunk at this many bytes (fp32 logits), so 16 x 2048 tokens
# x 150k vocab never sit in memory at once (core.blocks.BlockModel.sequence_nll).
LOGITS_CHUNK_BYTES = 256 * 2**20
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def human(n: float) -> str:
    """Bytes in binary units: 1536 -> '1.5 KiB'."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if abs(n) >= UNITS[unit]:
            return f"{n / UNITS[unit]:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class ModelShape:
    """What the memory and FLOPs of a Llama-family decoder depend on, read from config.json."""

    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    attn_bias: bool  # Qwen2 has q/k/v biases

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(
                num_layers=int(config["num_hidden_layers"]),
                hidden=hidden,
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate=int(config["intermediate_size"]),
                vocab=int(config["vocab_size"]),
                tied=bool(config.get("tie_word_embeddings", False)),
                attn_bias=config.get("model_type") == "qwen2"
                or bool(config.get("attention_bias", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError("model", f"config.json lacks a usable {e} for planning") from None

    # ---- parameters ------------------------------------------------------------------------
    def mha_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = (q + 2 * kv) if self.attn_bias else 0
        return self.hidden * (q + 2 * kv) + q * self.hidden + bias + self.hidden  # + its norm

    def mlp_params(self) -> int:
        return 3 * self.hidden * self.intermediate + self.hidden

    def params(self) -> int:
        embed = self.vocab * self.hidden
        layers = self.num_layers * (self.mha_params() + self.mlp_params())
        return embed * (1 if self.tied else 2) + layers + self.hidden  # + the final norm

    # ---- compute ---------------------------------------------------------------------------
    def block_flops(self, kind: str, tokens: int, seq_len: int) -> float:
        """Multiply-adds x2 of one block over `tokens` tokens in sequences of `seq_len`."""
        if kind == "mlp":
            return 2.0 * tokens * 3 * self.hidden * self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        projections = 2.0 * tokens * self.hidden * (2 * q + 2 * kv)
        attention = 2.0 * tokens * seq_len * q * 2 / 2  # QK^T and AV, causal: half the pairs
        return projections + attention

    def iteration_flops(self, samples: int, seq_len: int, budget_kept: int | None) -> float:
        """FLOPs of the first iteration: every candidate's pass (from its nearest kept position,
        skipping itself, to the end, plus the lm_head), and the full pass that builds the cache."""
        tokens = samples * seq_len
        positions = 2 * self.num_layers
        per = [
            self.block_flops("mha" if p % 2 == 0 else "mlp", tokens, seq_len)
            for p in range(positions)
        ]
        head = 2.0 * tokens * self.hidden * self.vocab
        kept = cache_layout(positions, 1, budget_kept).kept
        total = sum(per) + head
        for p in range(positions):
            start = max((k for k in kept if k <= p), default=0)
            total += sum(per[start:p]) + sum(per[p + 1 :]) + head
        return total


@dataclass(frozen=True)
class CacheLayout:
    """Which positions a cache keeps, and where (`host` only where the model is on a GPU)."""

    kept: tuple[int, ...]  # increasing, within 1..positions-1
    on_device: frozenset[int] = field(default_factory=frozenset)
    position_bytes: int = 0

    def start(self, position: int) -> int:
        """The kept position a candidate at `position` restarts from (0: the embeddings)."""
        return max((k for k in self.kept if k <= position), default=0)

    def bytes(self) -> tuple[int, int]:
        """(device bytes, host bytes) of the whole cache."""
        device = len(self.on_device) * self.position_bytes
        return device, len(self.kept) * self.position_bytes - device


def cache_layout(
    positions: int, position_bytes: int, budget: int | None, host_budget: int = 0
) -> CacheLayout:
    """Keep as many positions as the budgets allow, evenly spaced over 1..positions-1 so no
    candidate recomputes more than one gap. `budget=None` keeps every position. Positions past
    the device budget go to the host budget (pinned CPU memory, for a model on a GPU)."""
    wanted = positions - 1
    if budget is None:
        on_device = wanted
        host = 0
    else:
        on_device = min(wanted, budget // max(position_bytes, 1))
        host = min(wanted - on_device, host_budget // max(position_bytes, 1))
    m = on_device + host
    kept = tuple((i * positions) // (m + 1) for i in range(1, m + 1))
    return CacheLayout(kept, frozenset(kept[:on_device]), position_bytes)
