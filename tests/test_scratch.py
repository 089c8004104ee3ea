"""A worker's disk: dead processes' work folders are removed, the download cache stays under its
budget, least recently used first, and never loses an entry in use."""

import os
import socket
import subprocess
import sys
import time

from service.settings import Settings
from worker.scratch import IN_USE_S, clean_leftovers, evict, job_scratch


def test_leftover_work_folders_of_dead_workers_are_removed(tmp_path):
    settings = Settings(work_dir=tmp_path)
    mine = job_scratch(settings, "job-1")
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    dead = tmp_path / f"{socket.gethostname()}-{dead_pid}" / "job-2-abc"
    dead.mkdir(parents=True)
    other_host = tmp_path / "another-host-1" / "job-3-def"
    other_host.mkdir(parents=True)
    assert clean_leftovers(settings) == [dead.parent]
    assert mine.is_dir() and other_host.is_dir() and not dead.parent.exists()
    assert mine.parent.name == f"{socket.gethostname()}-{os.getpid()}"


def test_download_cache_evicts_least_recently_used_first(tmp_path):
    now = time.time()
    entries = {}
    for n, age in enumerate([5000, 4000, 3000, 10]):  # seconds since last use
        entry = tmp_path / "models" / f"m{n}"
        entry.mkdir(parents=True)
        (entry / "model.safetensors").write_bytes(b"x" * 1000)
        os.utime(entry, (now - age, now - age))
        entries[n] = entry
    calibration = tmp_path / "calibration" / "c.txt"
    calibration.parent.mkdir()
    calibration.write_bytes(b"y" * 1000)
    os.utime(calibration, (now - 3500, now - 3500))
    removed = evict(tmp_path, budget_bytes=2500, now=now)
    assert removed == [entries[0], entries[1], calibration]  # oldest first, down to the budget
    assert entries[2].is_dir() and entries[3].is_dir()
    # entries used within IN_USE_S stay even over budget
    assert evict(tmp_path, budget_bytes=0, now=now) == [entries[2]]
    assert entries[3].is_dir() and 10 < IN_USE_S
