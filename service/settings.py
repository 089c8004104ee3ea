"""The service's one configuration object, read from BLOCKPRUNE_* environment variables.

S3 credentials are not here: boto3 reads the standard AWS_* variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE...) itself.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.logs import LogFormat


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BLOCKPRUNE_", extra="ignore")

    # ---- where things live ------------------------------------------------------------------
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    # Connections per process, opened as needed and then kept: the pool, and what it may open
    # beyond it (each closed again when returned: a new PostgreSQL connection costs a backend
    # process, so churning them under load costs more than keeping them). The API admits as
    # many requests at once as the two allow (api.limits.InFlightLimit).
    db_pool_size: int = Field(20, ge=1)
    db_max_overflow: int = Field(0, ge=0)
    broker_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "blockprune"
    s3_endpoint_url: str | None = None  # None = AWS S3
    # Endpoint written into presigned URLs, when clients reach S3 by another name than the
    # service does (compose: the API talks to http://minio:9000, users to http://localhost:9000).
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "blockprune"
    s3_multipart_threshold_mb: int = Field(64, ge=5)
    s3_multipart_chunk_mb: int = Field(64, ge=5)  # S3 parts are at least 5 MiB
    # boto3's tries per request (the first included); when they fail, the job attempt is retried.
    # A hung S3 (it accepts connections and never answers) is found within connect or read
    # timeout x attempts, then waited out as an outage with "retry" events (worker.outages),
    # during which a cancel or a lost lease is noticed between tries.
    s3_max_attempts: int = Field(3, ge=1)
    s3_connect_timeout_s: float = Field(5, gt=0)
    s3_read_timeout_s: float = Field(10, gt=0)
    presign_ttl_s: int = Field(900, ge=1, le=7 * 24 * 3600)
    # Read-only prefixes of s3_bucket that every tenant may use as inputs (comma-separated),
    # e.g. "models/public/,datasets/": the operator's shared base models and texts.
    s3_shared_prefixes: str = ""
    # ---- bounds on what one request or one tenant can consume -------------------------------
    max_request_bytes: int = Field(1 << 20, ge=1024)  # a request body, refused before auth
    # samples x seq_len of one job, at most (256 x 128 is the paper's setting: 32k tokens)
    max_calibration_tokens: int = Field(1 << 22, ge=2)
    max_calibration_mb: int = Field(1024, ge=1)  # a calibration file, at most
    tenant_max_active_jobs: int = Field(50, ge=1)  # queued + running jobs of one tenant
    # Started jobs' shares first, then jobs round-robin over tenants (service.fairness);
    # false: one first-in, first-out queue.
    queue_fairness: bool = True
    quota_retry_after_s: int = Field(30, ge=1)  # Retry-After of a 429
    download_cache_gb: float = Field(200, gt=0)  # a worker's S3 download cache, LRU-evicted
    upload_max_file_mb: int = Field(64 * 1024, ge=1)  # one uploaded file, at most
    upload_max_files: int = Field(64, ge=1)  # files of one upload (a model's shards...)
    # A tenant's pending uploads (created, not completed), all together: what it may hold open
    # in S3 before completing or abandoning some. A 429 names the setting that was reached.
    tenant_max_pending_uploads: int = Field(20, ge=1)
    tenant_max_pending_upload_gb: float = Field(512, gt=0)  # their declared bytes
    tenant_max_pending_parts: int = Field(4096, ge=1)  # their presigned multipart parts
    # A pending upload older than this is swept: its multipart uploads aborted, its objects
    # and row deleted (the reaper's sweep). At least the URLs' lifetime.
    upload_ttl_s: float = Field(24 * 3600, gt=0)
    # How often the reaper sweeps: abandoned uploads, and what cancelled or failed jobs left
    # under their prefixes (worker.sweep).
    upload_sweep_interval_s: float = Field(300, gt=0)

    # ---- the Hugging Face hub as an input ---------------------------------------------------
    hf_allowed: bool = True  # hf: models and datasets at all
    # Organisations whose hf: models are allowed (comma-separated); empty: any. With HF_TOKEN
    # set, every tenant can read what that token can: gated and private repositories too.
    hf_allowed_orgs: str = ""
    # The most an hf: model's safetensors may weigh (GiB): a bigger one is refused from the
    # hub's file listing, before its weights are downloaded into the worker's Hugging Face cache.
    max_model_gb: float = Field(200, gt=0)
    cache_dir: Path = Path.home() / ".cache" / "blockprune" / "worker"
    work_dir: Path = Path(tempfile.gettempdir()) / "blockprune-jobs"

    # ---- how a worker runs a job ------------------------------------------------------------
    # auto: every GPU (layers spread over them), else cpu; or cpu, cuda:N, cuda:0,cuda:1
    device: str = "auto"  # the same on every worker of a pool
    # Caps a search's activation cache on this worker (a job's own cache_budget wins); unset:
    # whatever fits beside the model (core.planner).
    cache_budget: ByteSize | None = None
    # The memory of each worker's device(s), declared by the operator: the API refuses at submit
    # a job whose search cannot fit in it (contract.memory). Set out of the box (a 24 GiB GPU or
    # host); an operator with larger workers raises it, and an empty value turns the check off.
    worker_memory: ByteSize | None = ByteSize(24 * 2**30)
    lease_s: float = Field(60, gt=0)
    heartbeat_s: float = Field(15, gt=0)
    progress_write_s: float = Field(1.0, ge=0)  # at most one progress write per this interval
    max_attempts: int = Field(3, ge=1)
    retry_delay_s: float = Field(10, ge=0)
    # After a full disk or exhausted memory (worker.resources): long enough for another job's
    # cache or scratch to go, or for another worker to take the job; not seconds.
    resource_retry_delay_s: float = Field(60, ge=0)
    task_soft_time_limit_s: int = Field(6 * 3600, ge=1)
    task_time_limit_s: int = Field(6 * 3600 + 300, ge=1)
    # Redis redelivers an unacknowledged message after this; it must outlast any task.
    broker_visibility_timeout_s: int = Field(8 * 3600, ge=1)
    # Shares per search iteration for a job that does not say (service.fanout); as many as
    # the workers the operator runs lets one job use them all. 1: one worker runs the search.
    default_parallelism: int = Field(1, ge=1, le=64)

    # ---- outages: waited out with backoff under a time budget, not counted as crashes -------
    # A transient error of S3, the hub, PostgreSQL or the broker (connection refused, timeout,
    # 5xx, throttling) is retried after backoff_s(tries) (service.backoff) while the job stays
    # queued or running, with "retry" events naming what it waits for. Past its budget (seconds
    # since the outage began) the job fails with dependency_unavailable.
    outage_backoff_base_s: float = Field(0.5, gt=0)
    outage_backoff_max_s: float = Field(30, gt=0)
    s3_outage_budget_s: float = Field(900, ge=0)
    hub_outage_budget_s: float = Field(900, ge=0)
    database_outage_budget_s: float = Field(900, ge=0)
    broker_outage_budget_s: float = Field(3600, ge=0)  # a queued job waits this long for Redis
    outbox_poll_s: float = Field(1.0, gt=0)  # the relay's look at the outbox, when not woken

    # ---- the reaper (runs inside each `blockprune worker`, or alone: `blockprune reaper`) ----
    worker_runs_reaper: bool = True
    reaper_interval_s: float = Field(10, gt=0)
    # Re-send the message of a job or work item queued this long with none waiting for it in
    # Redis (lost with a Redis restart): a message merely waiting behind others has its marker,
    # so a short wait costs no duplicate, and a share lost mid-job is not stalled for minutes.
    queued_requeue_after_s: float = Field(30, gt=0)
    # A sent message's "waiting" marker lives this long (service.queue): a message that waits
    # longer in the queue is re-sent once per this interval, never more often.
    waiting_marker_ttl_s: float = Field(3600, gt=0)

    # ---- webhooks (each tenant signs with its own secret: `keys create`, POST /v1/webhook-secret)
    # A global secret is refused, so an old configuration cannot silently keep using one.
    webhook_secret: SecretStr | None = None
    webhook_deadline_s: float = Field(10, gt=0)  # one delivery attempt, connect to answer
    webhook_max_response_bytes: int = Field(4096, ge=64)  # read of the receiver's answer
    webhook_concurrency: int = Field(4, ge=1)  # deliveries in flight per process
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_backoff_s: float = Field(5, ge=0)  # doubled after each failed attempt
    webhook_allow_private: bool = False  # allow loopback/private targets (tests, closed networks)

    # ---- API --------------------------------------------------------------------------------
    api_page_size_max: int = Field(100, ge=1)

    # ---- logs and metrics (docs/observability.md) -------------------------------------------
    log_format: LogFormat = "json"  # json: one object per line (service.logs)
    # GET /metrics on the API: no tenant data in it, so open unless the operator closes it
    # (off), or asks Prometheus for `Authorization: Bearer <token>`.
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = None
    # A worker's metrics: served on this port by its main process (0: not served), and/or
    # pushed to a Prometheus Pushgateway every pushgateway_interval_s.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    worker_metrics_host: str = "0.0.0.0"
    pushgateway_url: str | None = None
    pushgateway_interval_s: float = Field(15, gt=0)

    @field_validator(
        "s3_endpoint_url",
        "s3_public_endpoint_url",
        "metrics_token",
        "pushgateway_url",
        "worker_memory",
        "cache_budget",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("cache_dir", "work_dir", mode="after")
    @classmethod
    def _expand_home(cls, v: Path) -> Path:
        return v.expanduser()

    def db_pool_capacity(self) -> int:
        return self.db_pool_size + self.db_max_overflow

    def shared_prefixes(self) -> list[str]:
        return [p.strip().lstrip("/") for p in self.s3_shared_prefixes.split(",") if p.strip()]

    def hf_orgs(self) -> list[str]:
        return [o.strip() for o in self.hf_allowed_orgs.split(",") if o.strip()]

    @model_validator(mode="after")
    def _check_timings(self) -> Settings:
        if self.webhook_secret is not None:
            raise ValueError(
                "BLOCKPRUNE_WEBHOOK_SECRET is no longer used: each tenant signs with its own "
                "secret (blockprune keys create, POST /v1/webhook-secret). Remove it"
            )
        for prefix in self.shared_prefixes():
            if not prefix.endswith("/") or ".." in prefix.split("/"):
                raise ValueError(f"s3_shared_prefixes: {prefix!r} must end with '/', no '..'")
        if self.upload_ttl_s < self.presign_ttl_s:
            raise ValueError(
                "upload_ttl_s must be at least presign_ttl_s: a sweep must not delete an upload "
                "whose URLs are still in use"
            )
        if self.heartbeat_s >= self.lease_s:
            raise ValueError("heartbeat_s must be shorter than lease_s (renew before it expires)")
        if not self.task_soft_time_limit_s < self.task_time_limit_s:
            raise ValueError("task_soft_time_limit_s must be below task_time_limit_s")
        if self.task_time_limit_s >= self.broker_visibility_timeout_s:
            raise ValueError(
                "task_time_limit_s must be below broker_visibility_timeout_s, or Redis "
                "redelivers a running job's message to another worker"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
