"""A worker's disk: per-process work folders cleaned after a crash, and the S3 download cache
kept under its size budget.

A job's scratch folder lives under `work_dir/<host>-<pid>/`, so a starting worker can tell a
dead process's leftovers (a kill -9 skips every `finally`) from a live neighbour's, and remove
only those. The download cache (worker.downloads) is evicted least recently used first down to
`download_cache_gb`; entries used in the last few minutes are kept, since a job may be reading
them, and a loaded model's files may go (an mmap outlives the unlink).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from service.settings import Settings

log = logging.getLogger(__name__)
IN_USE_S = 600  # an entry touched this recently is never evicted


def job_scratch(settings: Settings, job_id: str) -> Path:
    """A new scratch folder for one job attempt, in this process's own folder."""
    own = settings.work_dir / f"{socket.gethostname()}-{os.getpid()}"
    own.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=own))


def clean_leftovers(settings: Settings) -> list[Path]:
    """Remove the work folders of this host's worker processes that no longer run."""
    removed = []
    host = socket.gethostname()
    for folder in settings.work_dir.glob(f"{host}-*"):
        pid = folder.name.removeprefix(f"{host}-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed %d leftover work folders of dead workers", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def touch(entry: Path) -> None:
    """Mark a cache entry as just used (its mtime orders the eviction)."""
    os.utime(entry)


def evict(cache: Path, budget_bytes: int, now: float | None = None) -> list[Path]:
    """Delete the least recently used entries of `cache` (models/*, calibration/*) until the
    rest fits `budget_bytes`; entries used within IN_USE_S stay whatever the total."""
    now = time.time() if now is None else now
    entries = [e for kind in ("models", "calibration") for e in (cache / kind).glob("[!.]*")]
    sizes = {e: _size(e) for e in entries}
    total = sum(sizes.values())
    removed = []
    for entry in sorted(entries, key=lambda e: e.stat().st_mtime):
        if total <= budget_bytes:
            break
        if now - entry.stat().st_mtime < IN_USE_S:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        total -= sizes[entry]
        removed.append(entry)
    if removed:
        log.info("evicted %d download cache entries, %d bytes left", len(removed), total)
    return removed


def _size(entry: Path) -> int:
    if entry.is_file():
        return entry.stat().st_size
    return sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
