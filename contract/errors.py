"""Every error code a user can see, and the one exception for user mistakes.

The API renders `ErrorCode` in its OpenAPI description; jobs store `{"code", "message",
"field"}`; the CLI prints `field: message` and exits 2.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """One enumerated list. `describe()` gives the line the API docs show for each code."""

    INVALID_INPUT = "invalid_input"
    INVALID_REQUEST = "invalid_request"
    UNAUTHENTICATED = "unauthenticated"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    JOB_FINISHED = "job_finished"
    NOT_READY = "not_ready"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    STATE_MISMATCH = "state_mismatch"
    NOT_ENOUGH_TEXT = "not_enough_text"
    MISSING_CONFIG = "missing_config"
    MISSING_WEIGHTS = "missing_weights"
    MISSING_TOKENIZER = "missing_tokenizer"
    BAD_CONFIG = "bad_config"
    LOAD_FAILED = "load_failed"
    BAD_TOKENIZER = "bad_tokenizer"
    BAD_CACHE = "bad_cache"
    UNSAFE_WEIGHTS = "unsafe_weights"
    UNSUPPORTED_ARCHITECTURE = "unsupported_architecture"
    DOES_NOT_FIT = "does_not_fit"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    QUOTA_EXCEEDED = "quota_exceeded"
    MISSING_DEPENDENCY = "missing_dependency"
    HUB_UNREACHABLE = "hub_unreachable"
    S3_OBJECT_NOT_FOUND = "s3_object_not_found"
    S3_ACCESS_DENIED = "s3_access_denied"
    OUT_DIR_NOT_EMPTY = "out_dir_not_empty"
    INPUT_NOT_ALLOWED = "input_not_allowed"
    UPLOAD_INCOMPLETE = "upload_incomplete"
    TIME_LIMIT = "time_limit"
    INTERNAL_ERROR = "internal_error"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"
    DISK_FULL = "disk_full"
    OUT_OF_MEMORY = "out_of_memory"

    def describe(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    ErrorCode.INVALID_INPUT: "a job field or input file is wrong; `field` names it",
    ErrorCode.INVALID_REQUEST: "the request does not validate; `errors` lists every problem",
    ErrorCode.UNAUTHENTICATED: "no API key, or one that is unknown or revoked",
    ErrorCode.NOT_FOUND: "no such job for this tenant, or a named file or model does not exist",
    ErrorCode.METHOD_NOT_ALLOWED: "the path exists, but not with this HTTP method",
    ErrorCode.JOB_FINISHED: "the job already succeeded or failed, so it cannot be cancelled",
    ErrorCode.NOT_READY: "artifacts exist only once a job has succeeded",
    ErrorCode.IDEMPOTENCY_KEY_REUSED: "the Idempotency-Key was used with another request body",
    ErrorCode.STATE_MISMATCH: "a saved search state was made with other settings",
    ErrorCode.NOT_ENOUGH_TEXT: "the calibration source has fewer tokens than samples x seq_len",
    ErrorCode.MISSING_CONFIG: "the model has no config.json",
    ErrorCode.MISSING_WEIGHTS: "the model has no *.safetensors weights",
    ErrorCode.MISSING_TOKENIZER: "the model has no tokenizer files",
    ErrorCode.BAD_CONFIG: "the model's config.json cannot be read",
    ErrorCode.LOAD_FAILED: "the model's weights do not load (the message says why)",
    ErrorCode.BAD_TOKENIZER: "the model's tokenizer files do not load",
    ErrorCode.BAD_CACHE: "something that is not a converted model is in the cache's way",
    ErrorCode.UNSAFE_WEIGHTS: "the model has only pickle weights, which are never loaded",
    ErrorCode.UNSUPPORTED_ARCHITECTURE: "the model is not a Llama, Mistral, Qwen2 or Qwen3 decoder",
    ErrorCode.DOES_NOT_FIT: "the model, its activation cache and working tensors need more "
    "memory than the devices have (the message gives the sums)",
    ErrorCode.PAYLOAD_TOO_LARGE: "the request body is over the operator's limit (checked before "
    "authentication)",
    ErrorCode.QUOTA_EXCEEDED: "the tenant has as many queued and running jobs as the operator "
    "allows; retry after Retry-After seconds",
    ErrorCode.MISSING_DEPENDENCY: "an optional extra is needed (the message says which)",
    ErrorCode.HUB_UNREACHABLE: "an hf: source was asked for and the hub cannot be reached",
    ErrorCode.S3_OBJECT_NOT_FOUND: "an s3:// input does not exist",
    ErrorCode.S3_ACCESS_DENIED: "the service may not read an s3:// input",
    ErrorCode.INPUT_NOT_ALLOWED: "an input outside this tenant's uploads and the shared "
    "prefixes, or an hf: source the operator does not allow",
    ErrorCode.UPLOAD_INCOMPLETE: "the named upload has not been completed yet",
    ErrorCode.OUT_DIR_NOT_EMPTY: "the export directory exists and is not empty",
    ErrorCode.TIME_LIMIT: (
        "an attempt ran past the worker's time limit (it resumes if attempts remain)"
    ),
    ErrorCode.INTERNAL_ERROR: "an unexpected error in the service (it retries if attempts remain)",
    ErrorCode.ATTEMPTS_EXHAUSTED: "the job's workers were lost max_attempts times",
    ErrorCode.DEPENDENCY_UNAVAILABLE: "a job's: S3, the hub, the database or the queue stayed "
    "unreachable for longer than the operator's outage budget (the message says which and how "
    "long); an API answer's (503): the database is down for now, retry after Retry-After seconds",
    ErrorCode.DISK_FULL: "the worker's disk had no room for the job's download or export (the "
    "message gives the bytes needed and free); retried after a pause while attempts remain",
    ErrorCode.OUT_OF_MEMORY: "the worker ran out of memory (the message gives the bytes asked "
    "for and free); retried after a pause while attempts remain",
}


class UserError(ValueError):
    """Bad input from a user (argument, file, model). The CLI prints it as one line and exits 2;
    the service stores it on the job as ``{"code": code, "message": str(self), "field": field}``."""

    def __init__(self, field: str, message: str, code: ErrorCode = ErrorCode.INVALID_INPUT) -> None:
        self.field = field
        self.message = message
        self.code = ErrorCode(code)
        super().__init__(f"{field}: {message}")

    def to_json(self) -> dict[str, str]:
        return {"code": self.code.value, "message": str(self), "field": self.field}
