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

from contract.errors import ErrorCode, UserError
from contract.spec import JobSpec, blocks_problem

# Where a search runs (a machine's choice, so no JobSpec field): core.devices parses it.
DEVICE_HELP = (
    "cpu, cuda, cuda:N, a list such as cuda:0,cuda:1 or cuda:0,cpu, or auto (every GPU, else cpu)"
)
# Memory that is no tensor of the search. CPU: what loading adds besides the weights
# (transformers' model modules, the tokenizer, the calibration text), measured with SmolLM2 by
# bench/memory.py. CUDA: the context, which torch's allocator does not count.
RUNTIME_BYTES = {"cpu": 224 * 2**20, "cuda": 512 * 2**20}
# Left free on a device, for the allocator's fragmentation and the runtime's own buffers.
HEADROOM = 0.08
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
    max_positions: int | None = None  # max_position_embeddings: the longest sequence it takes

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
                max_positions=(
                    int(config["max_position_embeddings"])
                    if config.get("max_position_embeddings")
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError("model", f"config.json lacks a usable {e} for planning") from None

    def problem(self, spec: JobSpec) -> tuple[str, str] | None:
        """(field, message) for a spec this model cannot take (checked before any memory is
        planned or allocated): sequences longer than its positions, more blocks than it has."""
        longest = self.max_positions
        lengths = [("seq_len", spec.seq_len)]
        if spec.evaluation is not None:
            lengths.append(("evaluation.seq_len", spec.evaluation.seq_len))
        for name, length in lengths:
            if longest is not None and length > longest:
                return name, (
                    f"must be at most the model's {longest:,} positions "
                    f"(max_position_embeddings), got {length:,}"
                )
        return blocks_problem(self.num_layers, spec.block_types, spec.num_blocks)

    def check(self, spec: JobSpec) -> None:
        problem = self.problem(spec)
        if problem is not None:
            raise UserError(*problem)

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

    def head_flops(self, tokens: int) -> float:
        return 2.0 * tokens * self.hidden * self.vocab

    def iteration_flops(
        self, samples: int, seq_len: int, layout: CacheLayout
    ) -> tuple[float, float]:
        """(decoder, lm_head) FLOPs of the first iteration: the full pass that builds the cache,
        then every candidate's pass (from its kept start, skipping itself, to the end)."""
        tokens = samples * seq_len
        kinds = ("mha", "mlp") * self.num_layers
        per = [self.block_flops(kind, tokens, seq_len) for kind in kinds]
        decoder = sum(per)
        for p in range(len(per)):
            decoder += sum(per[layout.start(p) : p]) + sum(per[p + 1 :])
        return decoder, (len(per) + 1) * self.head_flops(tokens)


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


@dataclass(frozen=True)
class MemoryPlan:
    """A search's memory on its device, in bytes. The peak is reached while a candidate is
    scored: model + cache + the activations held for the best candidate and recorded for the
    current one + one compute chunk's working tensors."""

    model: int
    position: int  # one cached position: samples x seq_len x hidden
    layout: CacheLayout
    held: int  # at most, beside the cache
    working: int
    runtime: int = 0  # the libraries' own memory (RUNTIME_BYTES)

    @property
    def cache(self) -> int:
        return self.layout.bytes()[0]

    @property
    def host(self) -> int:
        return self.layout.bytes()[1]

    @property
    def peak(self) -> int:
        return self.model + self.cache + self.held + self.working + self.runtime

    def describe(self, free: int, device: str) -> str:
        """One line: 'memory: model 513.13 MiB + cache 265.50 MiB (59 positions kept) + ...'."""
        kept = f"{len(self.layout.kept)} positions kept"
        host = f" + {human(self.host)} pinned host" if self.host else ""
        return (
            f"memory: model {human(self.model)} + cache {human(self.cache)} ({kept}){host}"
            f" + held {human(self.held)} + working {human(self.working)} + runtime "
            f"{human(self.runtime)} = {human(self.peak)} at the peak, of {human(free)} usable on "
            f"{device}"
        )


def plan_search(
    shape: ModelShape,
    samples: int,
    seq_len: int,
    dtype: str,
    batch_size: int | None = None,
    budget: int | None = None,
    host_budget: int = 0,
    kind: str = "cpu",
) -> MemoryPlan:
    """The memory of a search with this budget (None: every position, winner always held) on a
    device of `kind` (cpu or cuda)."""
    e = DTYPE_BYTES[dtype]
    positions = 2 * shape.num_layers
    position = samples * seq_len * shape.hidden * e
    layout = cache_layout(positions, position, budget, host_budget)
    device, _ = layout.bytes()
    # Unlimited, the best candidate's activations and the current one's are both recorded:
    # up to two more copies of the cache (candidates near the front have nearly all after them).
    held_max = 2 * device
    held = held_max if budget is None else max(0, min(held_max, budget - device))
    return MemoryPlan(
        shape.params() * e,
        position,
        layout,
        held,
        working_bytes(shape, samples, seq_len, dtype, batch_size),
        RUNTIME_BYTES[kind],
    )


def working_bytes(
    shape: ModelShape, samples: int, seq_len: int, dtype: str, batch_size: int | None
) -> int:
    """One compute chunk's transient tensors at their largest: a block's (the MLP's three
    intermediate-sized tensors, or attention's fp32 scores where no fused kernel applies) or
    the lm_head's (a capped chunk of fp32 logits and its log-softmax)."""
    e = DTYPE_BYTES[dtype]
    b = min(batch_size or samples, samples)
    tokens = b * seq_len
    hidden_states = 4 * tokens * shape.hidden * e  # the chunk's input, norm output, residual sum
    mlp = 3 * tokens * shape.intermediate * e
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    attention = tokens * (2 * q + 2 * kv) * e + b * shape.heads * seq_len * seq_len * 4
    rows = min(b, max(1, LOGITS_CHUNK_BYTES // (seq_len * shape.vocab * 4)))
    logits = rows * (seq_len - 1) * shape.vocab
    head = logits * (4 + 4 + (e if e != 4 else 0))  # logits (+ their fp32 copy), log-softmax
    return hidden_states + max(mlp, attention, head)


@dataclass(frozen=True)
class Capacity:
    device: str
    free: int  # bytes the search may use on the device(s)
    host_free: int = 0  # pinned CPU memory for the cache's host tier (0 when the model is on CPU)
    kind: str = "cpu"  # or cuda


def choose_budget(
    shape: ModelShape, spec: JobSpec, cap: Capacity, machine_budget: int | None = None
) -> tuple[int | None, int, MemoryPlan]:
    """(device budget, host budget, plan) for `spec` on `cap`: the spec's or the machine's
    budget, else everything when it all fits, else what is left beside the model. A setting
    that cannot fit raises a UserError with the arithmetic."""
    args = (shape, spec.samples, spec.seq_len, spec.dtype, spec.batch_size)
    floor = plan_search(
        *args, budget=0, kind=cap.kind
    )  # no cache at all: the least a search can take
    if floor.peak > cap.free:
        raise UserError(
            "samples",
            f"cannot fit on {cap.device}: model {human(floor.model)} + working tensors "
            f"{human(floor.working)} (one chunk of {spec.batch_size or spec.samples} x "
            f"{spec.seq_len} tokens) = {human(floor.peak)} > {human(cap.free)} free. "
            "Use a smaller batch_size, a lower-precision dtype or more devices",
            code=ErrorCode.DOES_NOT_FIT,
        )
    wanted = spec.cache_budget if spec.cache_budget is not None else machine_budget
    if wanted is not None:
        plan = plan_search(*args, budget=wanted, host_budget=cap.host_free, kind=cap.kind)
        if plan.peak > cap.free:
            raise UserError(
                "cache_budget",
                f"{human(wanted)} does not fit on {cap.device}: model {human(plan.model)} + "
                f"cache {human(plan.cache + plan.held)} + working {human(plan.working)} = "
                f"{human(plan.peak)} > {human(cap.free)} free; at most "
                f"{human(cap.free - floor.peak)} fits",
                code=ErrorCode.DOES_NOT_FIT,
            )
        return wanted, cap.host_free, plan
    everything = plan_search(*args, budget=None, kind=cap.kind)
    if everything.peak <= cap.free:
        return None, 0, everything
    budget = cap.free - floor.peak
    plan = plan_search(*args, budget=budget, host_budget=cap.host_free, kind=cap.kind)
    return budget, cap.host_free, plan
