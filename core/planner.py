"""Will a search fit, and how long will an iteration take? The machine's side of the planner.

contract.memory has the arithmetic (pure Python, shared with the API's submit check); here are
the machine's facts it needs: the devices' free memory and their measured throughput. `prune`
calls `choose_budget` before it loads a single weight, so a setting that cannot fit is refused at
once with the sums, instead of failing an hour in with an out-of-memory error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from contract import JobSpec, UserError
from contract.memory import HEADROOM, Capacity, ModelShape, choose_budget, human, plan_search


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


def measured_flops(device: torch.device, dtype: torch.dtype, shape: ModelShape) -> float:
    """FLOP/s of this device on a matmul shaped like the model's MLP (a second of work)."""
    x = torch.randn(1024, shape.hidden, device=device, dtype=dtype)
    w = torch.randn(shape.hidden, shape.intermediate, device=device, dtype=dtype)
    x @ w  # warm up
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < 0.5:
        x @ w
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n * 2.0 * 1024 * shape.hidden * shape.intermediate / (time.perf_counter() - started)


def print_plan(spec: JobSpec, device: str, tflops: float | None = None) -> None:
    """`blockprune plan`: the model's memory, the cache's, and the peak and estimated time of
    an iteration at several budgets, against the devices' free memory."""
    from core.devices import parse_devices
    from core.models import DTYPES, resolve_model_dir

    devices = parse_devices(device)
    shape = read_shape(resolve_model_dir(spec.model)[1])
    cap = capacity(devices)
    if tflops is None:
        flops, source = measured_flops(devices[0], DTYPES[spec.dtype], shape), "measured here"
    else:
        flops, source = tflops * 1e12, "given"
    args = (shape, spec.samples, spec.seq_len, spec.dtype, spec.batch_size)
    full = plan_search(*args, budget=None, kind=cap.kind)
    positions = len(full.layout.kept)
    print(f"model      {shape.params():,} parameters, {human(full.model)} in {spec.dtype}")
    print(
        f"cache      {spec.samples} x {spec.seq_len} tokens: {human(full.position)} per "
        f"position, {positions} positions = {human(full.cache)}"
    )
    print(
        f"working    {human(full.working)} (one chunk of {spec.batch_size or spec.samples} "
        "sequences: MLP, attention or lm_head tensors)"
    )
    print(
        f"device     {cap.device}: {human(cap.free)} usable "
        f"(free memory less {HEADROOM:.0%} headroom)"
    )
    print(f"throughput {flops / 1e12:.2f} TFLOP/s ({source})")
    budgets: dict[str, int | None] = {
        "all+held": None,
        "all": full.cache,
        "1/2": full.position * (positions // 2),
        "1/4": full.position * (positions // 4),
        "one position": full.position,
        "none": 0,
    }
    if spec.cache_budget is not None:
        budgets["--cache-budget"] = spec.cache_budget
    try:
        chosen, _, _ = choose_budget(shape, spec, cap)
        budgets.setdefault("chosen", chosen)
        budgets["chosen"] = chosen
    except UserError as e:
        print(f"does not fit: {e.message}")
    header = ("budget", "bytes", "kept", "cache", "held", "peak", "fits", "s/iteration")
    rows = [header]
    for name, budget in budgets.items():
        plan = plan_search(*args, budget=budget, host_budget=cap.host_free, kind=cap.kind)
        seconds = shape.iteration_flops(spec.samples, spec.seq_len, plan.layout) / flops
        rows.append(
            (
                name,
                "unlimited" if budget is None else human(budget),
                str(len(plan.layout.kept)),
                human(plan.cache) + (f" + {human(plan.host)} host" if plan.host else ""),
                human(plan.held),
                human(plan.peak),
                "yes" if plan.peak <= cap.free else "NO",
                f"{seconds:.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
