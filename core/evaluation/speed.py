"""Inference speed and peak memory of several variants of a model (e.g. before / after pruning),
measured side by side in one run: the same prompt, interleaved repeats, medians."""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from itertools import chain
from typing import Any

import torch


@dataclass
class SpeedResult:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    peak_memory_bytes: int  # the variant's weights + the most its prefill and decode held at once
    memory_method: str  # how the run's part of the peak was measured
    params: int  # parameters live in the variant (a no-op'd block has none; tied weights once)
    weights_bytes: int  # its parameters and buffers

    def to_json(self) -> dict:
        return asdict(self)


Variant = Callable[[], AbstractContextManager[Any]]


def measure_speed(
    variants: dict[str, Variant],
    *,
    prompt_len: int = 128,
    batch_size: int = 1,
    new_tokens: int = 32,
    repeats: int = 3,
    vocab_size: int | None = None,
    seed: int = 0,
) -> dict[str, SpeedResult]:
    """Prefill and greedy-decode speed, and peak memory, of each variant (a factory of a context
    manager yielding a causal LM) on one random prompt of `batch_size` x `prompt_len` token ids
    (below `vocab_size`, default the first variant's vocabulary) and `new_tokens` decode steps.

    A variant's context is open only while it is measured, since views such as
    `core.export.inmemory.pruned_view` swap modules on a model that other variants share."""
    if not variants:
        raise ValueError("measure_speed: no variants")
    for name, value in (("prompt_len", prompt_len), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"measure_speed: {name} must be >= 1, got {value}")
    if new_tokens < 1 or repeats < 1:
        raise ValueError(f"measure_speed: new_tokens and repeats must be >= 1 ({new_tokens=})")
    prompt: torch.Tensor | None = None
    sizes: dict[str, tuple[int, int]] = {}
    memory: dict[str, tuple[int, str]] = {}
    prefill: dict[str, list[float]] = {name: [] for name in variants}
    decode: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for name, factory in variants.items():
            with factory() as model:
                if prompt is None:  # the same ids for every variant, drawn on the CPU (seeded)
                    vocab = vocab_size or int(model.config.vocab_size)
                    gen = torch.Generator().manual_seed(seed)
                    prompt = torch.randint(0, vocab, (batch_size, prompt_len), generator=gen)
                ids = prompt.to(_device(model))
                greedy_decode(model, ids, new_tokens)  # warm-up: kernels, caches, lazy init
                sizes[name] = _sizes(model)
                # A run of its own: the profiler would slow down (and so spoil) a timed run.
                run_peak, method = _run_peak_memory(model, ids, new_tokens)
                memory[name] = (sizes[name][1] + run_peak, method)
        assert prompt is not None
        # Interleaved: every repeat runs each variant in turn, so that drifts in machine load
        # (other jobs, thermal throttling) hit all the variants alike instead of one of them.
        for _ in range(repeats):
            for name, factory in variants.items():
                with factory() as model:
                    _, prefill_s, decode_s = greedy_decode(
                        model, prompt.to(_device(model)), new_tokens
                    )
                prefill[name].append(prefill_s)
                decode[name].append(decode_s)
    return {
        name: SpeedResult(
            prefill_tokens_per_s=batch_size * prompt_len / statistics.median(prefill[name]),
            decode_tokens_per_s=batch_size * new_tokens / statistics.median(decode[name]),
            peak_memory_bytes=memory[name][0],
            memory_method=memory[name][1],
            params=sizes[name][0],
            weights_bytes=sizes[name][1],
        )
        for name in variants
    }


def greedy_decode(
    model: Any, ids: torch.Tensor, new_tokens: int
) -> tuple[torch.Tensor, float, float]:
    """Greedy generation by hand: one prefill forward of `ids` (its last logits give the first
    token), then exactly `new_tokens` single-token forwards on the KV cache, each giving one more
    token. Returns the `new_tokens + 1` tokens, the prefill seconds and the decode seconds.
    A manual loop rather than `model.generate`, so that the timer holds those steps and nothing
    else (generate adds logits processing, stopping criteria, and ends early on EOS)."""
    device = ids.device
    cache_kwarg = _cache_kwarg(model)
    _sync(device)
    start = time.perf_counter()
    # logits_to_keep=1: only the last position's logits are needed, as generate does too
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    prefilled = time.perf_counter()
    tokens = [token]
    for _ in range(new_tokens):
        step = {cache_kwarg: _cache_of(out)}
        out = model(input_ids=token, use_cache=True, logits_to_keep=1, **step)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    _sync(device)
    return torch.cat(tokens, dim=1), prefilled - start, time.perf_counter() - prefilled


def _run_peak_memory(model: Any, ids: torch.Tensor, new_tokens: int) -> tuple[int, str]:
    """The most bytes one greedy run holds at once above what was allocated before it (the KV
    cache and activations), and how that was measured."""
    device = ids.device
    if device.type == "cuda":
        # Above the resident memory, not the raw maximum: a pruned view leaves its removed
        # blocks' weights resident, and other variants' models may be loaded on the GPU too;
        # the variant's own weights are added by the caller.
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        greedy_decode(model, ids, new_tokens)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - resident, "cuda_max_allocated+weights"
    return _profiled_peak(lambda: greedy_decode(model, ids, new_tokens))


def _profiled_peak(run: Callable[[], object]) -> tuple[int, str]:
    """CPU: torch has no allocator counter to reset, and RSS cannot tell variants apart in one
    process (glibc reuses freed memory), so replay the profiler's record of every allocation and
    free of torch's CPU allocator during `run`, in time order, and take the running maximum."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    try:  # a private part of torch's profiler (what torch.profiler._memory_profile reads too)
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except AttributeError:
        roots = []
    events, stack = [], list(roots)
    while stack:  # allocations are nested under the ops that made them
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append(event)
    if not events:  # the profiler saw nothing: say so rather than report a made-up peak
        return 0, "cpu_unmeasured_weights_only"
    events.sort(key=lambda e: e.start_time_ns)
    # Only frees of memory allocated during the run count: a tensor from before it (an earlier
    # run's cache) that is freed now would otherwise pull the curve below its true height.
    live: dict[int, int] = {}
    held = peak = 0
    for event in events:
        fields = event.extra_fields
        if fields.alloc_size > 0:
            live[fields.ptr] = fields.alloc_size
            held += fields.alloc_size
            peak = max(peak, held)
        else:
            held -= live.pop(fields.ptr, 0)
    return peak, "cpu_profiler_allocations+weights"


def _sizes(model: Any) -> tuple[int, int]:
    """(parameters, bytes of parameters and buffers) of the modules in the model now; each
    tensor once, so tied embeddings are counted once."""
    params = sum(p.numel() for p in model.parameters())
    tensors = {id(t): t for t in chain(model.parameters(), model.buffers())}
    return params, sum(t.numel() * t.element_size() for t in tensors.values())


def _device(model: Any) -> torch.device:
    return model.get_input_embeddings().weight.device  # where the input ids must go


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading a clock
        torch.cuda.synchronize(device)


def _cache_kwarg(model: Any) -> str:
    # transformers 5 renamed `past_key_values` to `cache` (the old name warns until removed)
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
