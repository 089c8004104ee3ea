"""The client install: `pip install blockprune` without the [engine] extra brings no torch, and
its `blockprune jobs` runs a job on a real service (uvicorn, Celery workers, moto S3) from start
to download. The local engine's commands say which extra they need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A new venv with the project installed as a user of the client would: no extras, every
    version from the lock. Its python."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
    subprocess.run([*install, "-e", str(REPO)], check=True, capture_output=True)
    return python


def run(python: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(python), "-m", "blockprune", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )


def test_the_client_install_has_no_torch_and_runs_a_job_end_to_end(
    client_venv, live_api, workers, tiny_llama, tmp_path
):
    probe = "import importlib.util as u; print([m for m in ('torch', 'transformers', 'fastapi', 'sqlalchemy') if u.find_spec(m)])"  # noqa: E501
    found = subprocess.run([str(client_venv), "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == "[]", found  # none of them is installed, not just unimported

    from .fixtures import _new_key

    env = {"BLOCKPRUNE_API_URL": live_api, "BLOCKPRUNE_API_KEY": _new_key("client-install")}
    workers.ensure()
    flags = ["--calibration", tiny_llama["calibration"], "--num-blocks", "2", "--samples", "4"]
    flags += ["--seq-len", "16", "--poll", "0.2", "--timeout", "240"]
    model = str(tiny_llama["local_dir"])  # a local folder: uploaded through the API first
    submitted = run(client_venv, "jobs", "submit", "--model", model, *flags, "--wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert "succeeded; fetch it with" in submitted.stdout
    job_id = submitted.stdout.splitlines()[0]
    dest = tmp_path / "export"
    downloaded = run(client_venv, "jobs", "download", job_id, "--dest", str(dest), env=env)
    assert downloaded.returncode == 0, downloaded.stderr
    pruning = json.loads((dest / "pruning.json").read_text())
    assert len(pruning["removed"]) == 2 and (dest / "model.safetensors").is_file()
    status = run(client_venv, "jobs", "status", job_id, env=env)
    assert json.loads(status.stdout)["status"] == "succeeded"


def test_the_engine_commands_name_the_extra_they_need(client_venv, tmp_path):
    local = run(client_venv, "ppl", "--model", "builtin:smollm2-135m", "--data", "x.txt")
    assert local.returncode == 2
    assert local.stderr.count("\n") == 1, local.stderr  # one line, no traceback
    assert "pip install 'blockprune[engine]'" in local.stderr and "torch" in local.stderr
