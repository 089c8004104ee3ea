"""A full disk and exhausted memory are named with their figures (worker.resources), from real
errors: ENOSPC from writing to /dev/full, torch's CPU allocator refusing a huge tensor."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from contract import ErrorCode
from worker.resources import ResourceExhausted, check_disk, exhausted, free_bytes


def test_enospc_from_a_write_is_disk_full_with_the_free_figure(tmp_path):
    with pytest.raises(OSError) as raised, open("/dev/full", "wb") as full:
        full.write(b"x" * 4096)
        full.flush()
    assert raised.value.errno == errno.ENOSPC
    wrapped = RuntimeError("the export failed")
    wrapped.__cause__ = raised.value
    found = exhausted(wrapped, tmp_path)
    assert found is not None and found.code is ErrorCode.DISK_FULL
    assert found.free is not None and found.free > 0
    assert "free" in str(found) and found.to_json()["code"] == "disk_full"


def test_a_refused_allocation_is_out_of_memory_with_what_it_asked_for(tmp_path):
    with pytest.raises(RuntimeError) as raised:
        torch.empty(2**52, dtype=torch.uint8)
    found = exhausted(raised.value, tmp_path)
    assert found is not None and found.code is ErrorCode.OUT_OF_MEMORY
    assert found.needed == 2**52
    assert "needed 4194304.00 GiB" in str(found) and "free" in str(found)


def test_a_cuda_message_gives_the_device_figures(tmp_path):
    error = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB "
        "of which 1.50 GiB is free."
    )
    found = exhausted(error, tmp_path)
    assert found is not None and found.code is ErrorCode.OUT_OF_MEMORY
    assert (found.needed, found.free) == (2 * 2**30, int(1.5 * 2**30))
    assert "GPU" in str(found)


def test_other_errors_are_not_resources(tmp_path):
    assert exhausted(ValueError("no"), tmp_path) is None
    assert exhausted(OSError(errno.EACCES, "denied"), tmp_path) is None


def test_check_disk_refuses_what_does_not_fit(tmp_path):
    free = free_bytes(tmp_path / "not" / "made" / "yet")
    check_disk(tmp_path, 1, "a download")
    with pytest.raises(ResourceExhausted) as refused:
        check_disk(Path(tmp_path), free * 2 + 2**40, "a download of the model")
    assert refused.value.code is ErrorCode.DISK_FULL and refused.value.needed == free * 2 + 2**40
    assert "a download of the model" in str(refused.value)
