"""What the API returns, as typed objects. They mirror api/schemas.py (and the upload views of
api/routers/uploads.py) field for field, built on the same contract types (JobSpec, Progress,
RemovedBlock, JobStatus, Phase, ErrorCode), but without importing the API: it needs FastAPI
and SQLAlchemy, and a client needs neither. tests/svc/test_svc_client.py compares the fields.

Unknown fields are ignored, so a newer service does not break an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from contract import ErrorCode, JobSpec, JobStatus, Phase, Progress, RemovedBlock
from contract.evaluation import EvaluationSpec
from contract.state import RaceRecord

_IGNORE = ConfigDict(extra="ignore", frozen=True)


class JobError(BaseModel):
    model_config = _IGNORE
    code: ErrorCode
    message: str
    field: str | None = None


class Evaluation(EvaluationSpec):
    model_config = _IGNORE
    report: dict[str, Any] | None = None  # what was measured, once the job has run it


class Job(JobSpec):
    """A job as `GET /v1/jobs/{id}` shows it: its spec's fields, and where it is."""

    model_config = _IGNORE
    evaluation: Evaluation | None = None  # type: ignore[assignment]
    id: str
    status: JobStatus
    phase: Phase | None
    metadata: dict[str, str]
    webhook_url: str | None
    parallelism: int
    progress: Progress
    base_ppl: float | None
    removed: list[RemovedBlock]
    races: list[RaceRecord] = []  # search racing: each iteration's stages
    error: JobError | None
    attempts: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """succeeded, failed or cancelled: nothing will change any more."""
        return self.status.terminal


class JobPage(BaseModel):
    model_config = _IGNORE
    data: list[Job]
    has_more: bool


class Event(BaseModel):
    model_config = _IGNORE
    id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime


class EventList(BaseModel):
    model_config = _IGNORE
    data: list[Event]


class ArtifactFile(BaseModel):
    model_config = _IGNORE
    name: str
    size: int
    sha256: str
    url: str  # presigned GET URL, valid for Artifacts.expires_in seconds


class Artifacts(BaseModel):
    model_config = _IGNORE
    files: list[ArtifactFile]
    expires_in: int


class PartUrl(BaseModel):
    model_config = _IGNORE
    part_number: int
    url: str


class UploadFile(BaseModel):
    model_config = _IGNORE
    name: str
    size: int
    url: str | None = None  # PUT the whole file here (with `headers`)...
    headers: dict[str, str] | None = None
    parts: list[PartUrl] | None = None  # ...or each part_size_bytes slice to its URL


class Upload(BaseModel):
    model_config = _IGNORE
    id: str
    kind: str
    status: Literal["pending", "complete"]
    ref: str  # what a job's model or calibration names: upload:<id>
    files: list[UploadFile]
    part_size_bytes: int
    expires_in: int | None = None
