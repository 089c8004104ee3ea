"""Request and response bodies of the API. The job's fields come from contract.JobSpec; only
what is the service's own (tenant metadata, webhook, status, timings) is added here."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from contract import (
    ErrorCode,
    JobSpec,
    JobStatus,
    Phase,
    Progress,
    RemovedBlock,
    SearchState,
)
from contract.evaluation import EvaluationSpec
from contract.sources import CALIBRATION_SUFFIXES
from contract.state import RaceRecord
from contract.text import CleanStr
from service.tables import Job

S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/\S*$")
UPLOAD = re.compile(r"^upload:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HF_ID = re.compile(r"^hf:[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(@[\w.\-/]+)?$")
BUILTIN = re.compile(r"^builtin:[\w.\-]+$")
TASK_NAME = re.compile(r"^[A-Za-z0-9][\w\-]{0,127}$")  # lm-evaluation-harness names: arc_easy


def _text_source(v: str) -> str:
    """A calibration or evaluation text source, as the service reads them."""
    if S3_URI.match(v):
        if not v.endswith(CALIBRATION_SUFFIXES):
            raise ValueError("an s3:// text source must be a .txt or .jsonl file")
        return v
    if not (UPLOAD.match(v) or HF_ID.match(v) or BUILTIN.match(v)):
        raise ValueError("must be upload:ID, s3://bucket/key.txt|.jsonl, hf:NAME or builtin:NAME")
    return v


class JobOptions(BaseModel):
    """What a job carries besides its spec: the tenant's labels and where to say it ended."""

    metadata: dict[CleanStr, CleanStr] = Field(
        default_factory=dict, description="up to 32 string pairs"
    )
    webhook_url: AnyHttpUrl | None = Field(None, description="receives the final state, signed")
    parallelism: int | None = Field(
        None,
        strict=True,
        ge=1,
        le=64,
        description="shares per search iteration, scored by as many workers at once (default: "
        "the operator's BLOCKPRUNE_DEFAULT_PARALLELISM); the result is the same for any value",
    )

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 32:
            raise ValueError(f"at most 32 keys, got {len(v)}")
        for key, value in v.items():
            if not 1 <= len(key) <= 64 or len(value) > 512:
                raise ValueError(f"{key[:64]!r}: keys are 1-64 characters, values at most 512")
        return v


class JobCreate(JobSpec, JobOptions):
    """A pruning job: the fields of `blockprune prune`, read from the service's sources."""

    @field_validator("model")
    @classmethod
    def _model_source(cls, v: str) -> str:
        if not (UPLOAD.match(v) or S3_URI.match(v) or HF_ID.match(v) or BUILTIN.match(v)):
            raise ValueError(
                "must be upload:ID, s3://bucket/prefix/, hf:ORG/NAME[@revision] or builtin:NAME "
                "(the service does not read paths on its own disks)"
            )
        return v

    @field_validator("calibration")
    @classmethod
    def _calibration_source(cls, v: str) -> str:
        return _text_source(v)

    @field_validator("evaluation")
    @classmethod
    def _evaluation_sources(cls, v: EvaluationSpec | None) -> EvaluationSpec | None:
        if v is None:
            return v
        for n, source in enumerate(v.data):
            try:
                _text_source(source)
            except ValueError as e:
                raise ValueError(f"data[{n}]: {e}") from None
        for n, task in enumerate(v.tasks):
            if not TASK_NAME.match(task):  # a local task file would be code on the worker
                raise ValueError(f"tasks[{n}]: must be a harness task name, got {task!r}")
        return v

    def spec(self) -> JobSpec:
        """The engine's part of the request."""
        return JobSpec.model_validate(self.model_dump(include=set(JobSpec.model_fields)))

    def request_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class JobErrorView(BaseModel):
    code: ErrorCode
    message: str
    field: str | None = None


class EvaluationView(EvaluationSpec):
    report: dict[str, Any] | None = Field(
        None,
        description="what was measured before and after (the artifacts' report.json), once "
        "the job has run its evaluation",
    )


class JobView(JobSpec):
    model_config = ConfigDict(extra="ignore")

    evaluation: EvaluationView | None = None  # type: ignore[assignment]
    id: str
    status: JobStatus
    phase: Phase | None
    metadata: dict[str, str]
    webhook_url: str | None
    parallelism: int
    progress: Progress
    base_ppl: float | None
    removed: list[RemovedBlock]
    races: list[RaceRecord] = Field(
        default_factory=list,
        description="search racing: each iteration's stages (who raced, on how many sequences, "
        "who went on)",
    )
    error: JobErrorView | None
    attempts: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        spec = JobSpec.model_validate(job.spec)
        state = SearchState.from_json(job.state) if job.state else SearchState()
        if job.progress is not None:
            progress = Progress.model_validate(job.progress)
        else:
            progress = Progress(iteration=state.blocks_removed, total_iterations=spec.num_blocks)
        fields: dict[str, Any] = spec.model_dump()
        if fields["evaluation"] is not None:
            fields["evaluation"]["report"] = job.evaluation
        return cls(
            **fields,
            id=job.id,
            status=JobStatus(job.status),
            phase=Phase(job.phase) if job.phase else None,
            metadata=job.user_metadata,
            webhook_url=job.webhook_url,
            parallelism=job.parallelism,
            progress=progress,
            base_ppl=state.base_ppl,
            removed=state.removed,
            races=state.races,
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
