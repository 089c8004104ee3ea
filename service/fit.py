"""Can the model take a job, and will its search fit the worker pool? Checked at submit, before
anything is queued.

The operator declares each worker's device memory (BLOCKPRUNE_WORKER_MEMORY); the arithmetic is
the planner's (contract.memory), on the model's config.json: the builtin models' shapes are
known, an S3 model's config.json is read (one small GET). An hf: model is checked by the worker
before it downloads a weight; without a declared memory, nothing is checked here.
"""

from __future__ import annotations

import json
from typing import Any

from contract import ErrorCode, JobSpec, UserError
from contract.memory import HEADROOM, Capacity, ModelShape, choose_budget
from contract.sources import BUILTIN_MODEL_CONFIGS
from service.settings import Settings
from service.storage import parse_s3_uri, s3_client

CONFIG_MAX_BYTES = 1 << 20  # a config.json is a few KiB


def check_bounds(settings: Settings, spec: JobSpec) -> None:
    """The operator's bounds on one job (checked at submit and again by the worker)."""
    tokens = spec.samples * spec.seq_len
    if tokens > settings.max_calibration_tokens:
        raise UserError(
            "samples",
            f"samples x seq_len = {tokens:,} calibration tokens, over this service's limit of "
            f"{settings.max_calibration_tokens:,} (BLOCKPRUNE_MAX_CALIBRATION_TOKENS)",
        )
    evaluation = spec.evaluation
    if evaluation is not None and evaluation.data:
        # A source's text is tokenized whole unless max_tokens caps it: the same bound applies.
        limit = settings.max_calibration_tokens
        if evaluation.max_tokens is None or evaluation.max_tokens > limit:
            raise UserError(
                "evaluation.max_tokens",
                f"must be at most this service's limit of {limit:,} tokens per source "
                "(BLOCKPRUNE_MAX_CALIBRATION_TOKENS)",
            )


def check_fits(settings: Settings, spec: JobSpec, model_source: str) -> None:
    """A UserError for a spec the model cannot take (ModelShape.problem: sequence length,
    blocks), then (does_not_fit, with the sums) for a search the pool cannot hold.
    `model_source` is the resolved model: builtin:, hf: or an s3:// prefix."""
    if settings.worker_memory is None and not model_source.startswith("builtin:"):
        return  # an S3 model's config costs a request: the worker checks its shape first thing
    config = _config(settings, model_source, spec.model)
    if config is None:
        return
    shape = ModelShape.from_config(config)
    shape.check(spec)
    if settings.worker_memory is None:
        return
    free = int(settings.worker_memory * (1 - HEADROOM))
    kind = "cpu" if settings.device == "cpu" else "cuda"  # auto: plan for a GPU's context
    capacity = Capacity("a worker (BLOCKPRUNE_WORKER_MEMORY)", free, kind=kind)
    choose_budget(shape, spec, capacity, settings.cache_budget)


def _config(settings: Settings, source: str, shown_as: str) -> dict[str, Any] | None:
    if source.startswith("builtin:"):
        return BUILTIN_MODEL_CONFIGS[source.removeprefix("builtin:")]
    if not source.startswith("s3://"):
        return None  # hf: the worker plans it from the downloaded config.json
    s3 = s3_client(settings, quick=True)
    bucket, prefix = parse_s3_uri(source, "model")
    key = prefix.rstrip("/") + "/config.json" if prefix else "config.json"
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] > CONFIG_MAX_BYTES:
            raise UserError("model", f"{shown_as}: config.json is over 1 MiB", ErrorCode.BAD_CONFIG)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read(CONFIG_MAX_BYTES)
        config = json.loads(body)
    except UserError:
        raise
    except ValueError:
        raise UserError(
            "model", f"{shown_as}: unreadable config.json", ErrorCode.BAD_CONFIG
        ) from None
    except Exception as e:  # noqa: BLE001 - missing object or S3 trouble: the worker reports it
        if _missing(e):
            raise UserError(
                "model", f"{shown_as}: no config.json", ErrorCode.MISSING_CONFIG
            ) from None
        return None
    return config if isinstance(config, dict) else None


def _missing(e: Exception) -> bool:
    code = getattr(e, "response", {}).get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")
