"""A full disk and exhausted memory, named to the user with the figures (needed and free) as
their own error codes, instead of an internal error that burns the attempts in seconds.

`check_disk` refuses a step before it writes (a download of known size); `exhausted` recognises
the same conditions in an error raised midway (ENOSPC from any write; MemoryError, torch's CPU
allocator, CUDA's out-of-memory). The worker then cleans its scratch and gives the job back with
`resource_retry_delay_s` (a minute by default): another job's cache or scratch may be gone by
then, or another worker takes it; the last attempt's figures become the job's error.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
from pathlib import Path

from contract import ErrorCode
from service.settings import Settings

log = logging.getLogger(__name__)

GIB = 2**30
# torch: "you tried to allocate 9007199254740992 bytes" (CPU), "Tried to allocate 2.00 GiB" (CUDA)
_TRIED = re.compile(r"tried to allocate ([\d.]+)\s*(bytes|[KMGT]iB)", re.IGNORECASE)
# CUDA's message also says what the device had: "... of which 1.20 GiB is free"
_CUDA_FREE = re.compile(r"of which ([\d.]+)\s*(bytes|[KMGT]iB) is free", re.IGNORECASE)
_UNITS = {"bytes": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class ResourceExhausted(Exception):
    """The worker ran out of disk or memory: `code` is disk_full or out_of_memory."""

    def __init__(self, code: ErrorCode, what: str, needed: int | None, free: int | None) -> None:
        self.code, self.needed, self.free = code, needed, free
        figures = ", ".join(
            f"{label} {_gib(value)}"
            for label, value in (("needed", needed), ("free", free))
            if value is not None
        )
        super().__init__(f"{what}: {figures}" if figures else what)

    def to_json(self) -> dict[str, str]:
        return {"code": self.code.value, "message": str(self)}


def _gib(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(path: Path, needed: int, what: str) -> None:
    """Raise disk_full before writing `needed` bytes under `path` if they do not fit."""
    free = free_bytes(path)
    if needed > free:
        raise ResourceExhausted(
            ErrorCode.DISK_FULL, f"the worker's disk is full for {what}", needed, free
        )


def unexpected_failure(
    error: Exception, scratch: Path, settings: Settings, what: str, interrupted: str
) -> tuple[dict[str, str], float]:
    """The error the tenant reads for an unexpected failure of `what` (for this worker's log),
    and the wait before its retry. A disk or memory exhausted: named with its figures, retried
    after `resource_retry_delay_s`. Anything else: internal_error, "an internal error interrupted
    `interrupted`", retried after `retry_delay_s`; the exception, which may name internal hosts,
    paths or buckets, goes to this worker's log only. Called in the `except` block."""
    if (short := exhausted(error, scratch)) is not None:
        log.warning("%s: %s", what, short)
        return short.to_json(), settings.resource_retry_delay_s
    log.exception("%s failed", what)
    message = f"an internal error interrupted {interrupted}; it is retried while attempts remain"
    return {"code": ErrorCode.INTERNAL_ERROR.value, "message": message}, settings.retry_delay_s


def exhausted(error: BaseException, scratch: Path) -> ResourceExhausted | None:
    """The disk or memory exhaustion that `error` (or one of its causes) is, or None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ResourceExhausted):
            return seen
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            what = "the worker's disk filled up while writing"
            return ResourceExhausted(ErrorCode.DISK_FULL, what, None, free_bytes(scratch))
        if _out_of_memory(seen):
            text = str(seen)
            if "CUDA" in text:
                what, free = "the worker's GPU ran out of memory", _bytes(_CUDA_FREE, text)
            else:
                what, free = "the worker ran out of memory", _free_memory()
            return ResourceExhausted(ErrorCode.OUT_OF_MEMORY, what, _bytes(_TRIED, text), free)
        seen = seen.__cause__ or seen.__context__
    return None


def _bytes(pattern: re.Pattern[str], text: str) -> int | None:
    found = pattern.search(text)
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()]) if found else None


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True  # torch.cuda.OutOfMemoryError (torch.OutOfMemoryError) is a RuntimeError
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "DefaultCPUAllocator" in text or "out of memory" in text.lower()
    )


def _free_memory() -> int | None:
    """MemAvailable of this machine (Linux), in bytes."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
