"""Request and response bodies of the API, and the engine-side checks of a new job."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from core.pipeline import PruneSpec
from worker.models import Job

S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/\S*$")
HF_ID = re.compile(r"^hf:[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(@[\w.\-/]+)?$")
BUILTIN = re.compile(r"^builtin:[\w.\-]+$")
SPEC_FIELDS = (
    "model",
    "calibration",
    "num_blocks",
    "param_ratio",
    "block_types",
    "samples",
    "seq_len",
    "seed",
    "dtype",
    "text_field",
)


class JobCreate(BaseModel):
    """A pruning job; the fields mirror `blockprune prune`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        max_length=1024,
        description="s3://bucket/prefix/ (safetensors), hf:ORG/NAME[@rev] or builtin:smollm2-135m",
    )
    calibration: str = Field(
        max_length=1024,
        description="s3://bucket/key.txt|.jsonl, hf:wikitext2, hf:alpaca or builtin:stdlib-docs",
    )
    num_blocks: int | None = Field(None, ge=1, description="blocks to remove")
    param_ratio: float | None = Field(None, gt=0, lt=1, description="or: share of parameters")
    block_types: Literal["mix", "mha", "mlp"] = "mix"
    # defaults: the engine's own, as the CLI's
    samples: int = Field(PruneSpec.samples, ge=1, le=65536)
    seq_len: int = Field(PruneSpec.seq_len, ge=2, le=131072)
    seed: int = Field(PruneSpec.seed, ge=0, le=2**32 - 1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    text_field: str = Field("text", min_length=1, max_length=128, description=".jsonl text key")
    metadata: dict[str, str] = Field(default_factory=dict, description="up to 32 string pairs")
    webhook_url: AnyHttpUrl | None = Field(None, description="receives the final state, signed")

    @field_validator("model")
    @classmethod
    def _model_source(cls, v: str) -> str:
        if not (S3_URI.match(v) or HF_ID.match(v) or BUILTIN.match(v)):
            raise ValueError(
                "must be s3://bucket/prefix/, hf:ORG/NAME[@revision] or builtin:NAME "
                "(the service does not read paths on its own disks)"
            )
        return v

    @field_validator("calibration")
    @classmethod
    def _calibration_source(cls, v: str) -> str:
        if S3_URI.match(v):
            if not v.endswith((".txt", ".jsonl")):
                raise ValueError("an s3:// calibration source must be a .txt or .jsonl file")
            return v
        if not (HF_ID.match(v) or BUILTIN.match(v)):
            raise ValueError("must be s3://bucket/key.txt|.jsonl, hf:NAME or builtin:NAME")
        return v

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 32:
            raise ValueError(f"at most 32 keys, got {len(v)}")
        for key, value in v.items():
            if not 1 <= len(key) <= 64 or len(value) > 512:
                raise ValueError(f"{key[:64]!r}: keys are 1-64 characters, values at most 512")
        return v

    def spec(self) -> dict:
        """The engine's part of the request (core.pipeline.PruneSpec's fields)."""
        return {name: getattr(self, name) for name in SPEC_FIELDS}

    def request_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class Progress(BaseModel):
    iteration: int = Field(description="completed search iterations")
    total_iterations: int | None = Field(description="None for a param_ratio target")
    scored: int = Field(description="candidates scored in the running iteration")
    total_candidates: int
    fraction: float | None
    best_ppl: float | None = None


class RemovedBlock(BaseModel):
    block: Literal["mha", "mlp"]
    layer: int
    ppl: float = Field(description="calibration PPL after removing this block")


class JobErrorView(BaseModel):
    code: str
    message: str
    field: str | None = None


class JobView(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]
    phase: Literal["loading", "calibrating", "searching", "exporting", "uploading"] | None
    model: str
    calibration: str
    num_blocks: int | None
    param_ratio: float | None
    block_types: str
    samples: int
    seq_len: int
    seed: int
    dtype: str
    text_field: str
    metadata: dict[str, str]
    webhook_url: str | None
    progress: Progress
    base_ppl: float | None
    removed: list[RemovedBlock]
    error: JobErrorView | None
    attempts: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        state = job.state or {}
        removed = state.get("removed", [])
        progress = job.progress or {
            "iteration": len(removed),
            "total_iterations": job.spec.get("num_blocks"),
            "scored": 0,
            "total_candidates": 0,
            "fraction": 0.0 if job.spec.get("num_blocks") else None,
        }
        return cls(
            id=job.id,
            status=job.status,
            phase=job.phase,
            **job.spec,
            metadata=job.meta,
            webhook_url=job.webhook_url,
            progress=progress,
            base_ppl=state.get("base_ppl"),
            removed=removed,
            error=job.error,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobList(BaseModel):
    data: list[JobView]
    has_more: bool


class EventView(BaseModel):
    id: int
    kind: str = Field(description="created, status, phase, iteration, retry, error, ...")
    data: dict
    created_at: datetime


class EventList(BaseModel):
    data: list[EventView]


class ArtifactFile(BaseModel):
    name: str
    size: int
    sha256: str
    url: str = Field(description="presigned GET URL, valid for expires_in seconds")


class Artifacts(BaseModel):
    files: list[ArtifactFile]
    expires_in: int
