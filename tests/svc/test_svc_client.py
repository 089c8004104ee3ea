"""blockprune.client and `blockprune jobs` against the real stack over HTTP (uvicorn, Celery
workers, moto S3), and the client's retries against transports that fail on purpose."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from blockprune.cli import main
from blockprune.client import (
    Client,
    Conflict,
    ConnectionFailed,
    IntegrityError,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    ServerError,
    Unauthenticated,
    WaitTimeout,
)
from contract import ErrorCode, JobStatus

from .helpers import REPO, job_body

SMALL = {"num_blocks": 2, "samples": 4, "seq_len": 16}


@pytest.fixture(scope="module")
def api_key(database) -> str:
    """A tenant of this file's own, so that its job list holds only the jobs made here."""
    from .fixtures import _new_key

    return _new_key("client-tests")


@pytest.fixture
def client(live_api, api_key):
    with Client(live_api, api_key) as c:
        yield c


class Wrapped(httpx.BaseTransport):
    """The real HTTP transport, with `meddle(request, send)` deciding what the client gets."""

    def __init__(self, meddle) -> None:
        self.inner, self.meddle, self.seen = httpx.HTTPTransport(), meddle, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.meddle(request, self.inner.handle_request)

    def close(self) -> None:
        self.inner.close()


def test_the_client_imports_without_torch_or_the_service_frameworks():
    probe = "import sys, blockprune.client\nprint(sorted({'torch', 'fastapi', 'sqlalchemy'} & set(sys.modules)))"  # noqa: E501
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_the_client_models_mirror_the_api_schemas():
    from api import schemas
    from api.routers import uploads
    from blockprune.client import models

    pairs = [
        (models.Job, schemas.JobView),
        (models.JobError, schemas.JobErrorView),
        (models.Evaluation, schemas.EvaluationView),
        (models.JobPage, schemas.JobList),
        (models.Event, schemas.EventView),
        (models.EventList, schemas.EventList),
        (models.ArtifactFile, schemas.ArtifactFile),
        (models.Artifacts, schemas.Artifacts),
        (models.Upload, uploads.UploadView),
        (models.UploadFile, uploads.UploadFile),
        (models.PartUrl, uploads.PartUrl),
    ]
    for ours, theirs in pairs:
        assert set(ours.model_fields) == set(theirs.model_fields), (ours, theirs)


def test_submit_wait_and_download_verified(
    client, live_api, api_key, workers, tiny_llama, tmp_path
):
    workers.ensure()
    calibration = client.uploads.calibration(tiny_llama["calibration_path"])
    assert calibration.startswith("upload:")
    job = client.jobs.create(
        model=tiny_llama["model"], calibration=calibration, metadata={"via": "client"}, **SMALL
    )
    assert job.status == JobStatus.QUEUED and job.metadata == {"via": "client"}
    seen = []
    job = client.jobs.wait(job.id, timeout=60, poll=0.2, on_update=seen.append)
    assert job.status == JobStatus.SUCCEEDED and job.error is None, job
    assert seen[-1] == job and len(job.removed) == 2 and job.progress.fraction == 1.0
    assert "iteration" in [e.kind for e in client.jobs.events(job.id)]

    export = client.jobs.download(job.id, tmp_path / "export")
    names = {f.name for f in client.jobs.artifacts(job.id).files}
    files = {p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()}
    assert files == names  # and nothing else: no staging left
    pruning = json.loads((export / "pruning.json").read_text())
    assert pruning["removed"] == [r.model_dump() for r in job.removed]

    # A manifest that disagrees with the files: a typed error, and no file left behind.
    def tamper(request, send):
        response = send(request)
        if not request.url.path.endswith("/artifacts"):
            return response
        body = json.loads(response.read())
        body["files"][-1]["sha256"] = "0" * 64
        return httpx.Response(200, json=body)

    with Client(live_api, api_key, transport=Wrapped(tamper)) as tampered:
        with pytest.raises(IntegrityError) as caught:
            tampered.jobs.download(job.id, tmp_path / "tampered")
    assert caught.value.what == "sha256" and caught.value.expected == "0" * 64
    assert list((tmp_path / "tampered").iterdir()) == []


def test_errors_are_typed(client, live_api, tiny_llama):
    with pytest.raises(InvalidRequest) as caught:
        client.jobs.create(**job_body(tiny_llama, num_blocks=0))
    e = caught.value
    assert (e.status, e.code, e.field) == (422, ErrorCode.INVALID_REQUEST, "num_blocks")
    assert "greater than or equal to 1" in e.message
    with pytest.raises(NotFound):
        client.jobs.get(str(uuid.uuid4()))
    with Client(live_api, "bp_not-a-key") as stranger, pytest.raises(Unauthenticated):
        stranger.jobs.get(str(uuid.uuid4()))


def test_retry_after_is_honoured():
    calls: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            error = {"error": {"code": "quota_exceeded", "message": "busy"}}
            return httpx.Response(429, headers={"Retry-After": "1"}, json=error)
        return httpx.Response(200, json={"data": []})

    with Client("http://api.test", "bp_x", transport=httpx.MockTransport(answer)) as client:
        assert client.jobs.events(str(uuid.uuid4())) == []
    assert len(calls) == 2 and calls[1] - calls[0] >= 1.0

    # A Retry-After longer than the client may wait is not waited for.
    calls.clear()
    mock = httpx.MockTransport(
        lambda r: httpx.Response(429, headers={"Retry-After": "30"}, json={"error": {}})
    )
    with Client("http://api.test", "bp_x", transport=mock, max_wait_s=5) as client:
        with pytest.raises(QuotaExceeded) as caught:
            client.jobs.events(str(uuid.uuid4()))
    assert caught.value.retry_after == 30 and caught.value.code == ErrorCode.QUOTA_EXCEEDED


def test_no_answer_is_retried_then_raised(tmp_path):
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    mock = httpx.MockTransport(refuse)
    with Client("http://api.test", "bp_x", transport=mock, retries=2, backoff_base_s=0.01) as c:
        with pytest.raises(ConnectionFailed, match="ConnectError"):
            c.jobs.get(str(uuid.uuid4()))
        assert len(calls) == 3
        with pytest.raises(ConnectionFailed):  # a new upload is never sent twice
            (tmp_path / "calib.txt").write_text("some text")
            c.uploads.calibration(tmp_path / "calib.txt")
    assert len(calls) == 4


JOB = str(uuid.uuid4())
DOWN = {"error": {"code": "dependency_unavailable", "message": "the database is unavailable"}}


def _job(status: str) -> dict:
    """GET /v1/jobs/{id}'s answer, with what the client's model needs."""
    now = "2026-01-01T00:00:00Z"
    return {"id": JOB, "model": "s3://b/m/", "calibration": "builtin:stdlib-docs",
            "num_blocks": 1, "status": status, "phase": None, "metadata": {},
            "webhook_url": None, "parallelism": 1, "progress": {}, "base_ppl": None,
            "removed": [], "error": None, "attempts": 1, "max_attempts": 3, "created_at": now,
            "updated_at": now, "started_at": None, "finished_at": None}  # fmt: skip


def test_wait_waits_out_an_outage_within_its_timeout():
    """PostgreSQL goes down under a wait (issue 23): its 503s are waited out after their
    Retry-After, past the session's own retries, until the job ends or the timeout passes."""
    calls: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if 2 <= len(calls) <= 6:
            return httpx.Response(503, headers={"Retry-After": "0.3"}, json=DOWN)
        return httpx.Response(200, json=_job("running" if len(calls) == 1 else "succeeded"))

    mock = httpx.MockTransport(answer)
    with Client("http://api.test", "bp_x", transport=mock, retries=1) as client:
        assert client.jobs.wait(JOB, timeout=60, poll=0.01).status == JobStatus.SUCCEEDED
    assert len(calls) == 7
    assert min(b - a for a, b in zip(calls[1:-1], calls[2:], strict=True)) >= 0.3  # after 503s

    # Still down at the timeout: a WaitTimeout on time, that says so.
    calls.clear()
    with Client("http://api.test", "bp_x", transport=mock, retries=1) as client:
        began = time.monotonic()
        with pytest.raises(WaitTimeout, match="the service is unavailable") as caught:
            client.jobs.wait(JOB, timeout=1.0, poll=0.01)
    assert time.monotonic() - began < 3
    assert caught.value.job.status == JobStatus.RUNNING
    assert isinstance(caught.value.unavailable, ServerError)

    # Before the job was seen, the error is the caller's at once (a wrong URL, a wrong key).
    mock = httpx.MockTransport(lambda r: httpx.Response(503, json=DOWN))
    with Client("http://api.test", "bp_x", transport=mock, retries=0) as client:
        with pytest.raises(ServerError) as error:
            client.jobs.wait(JOB, timeout=60)
    assert error.value.code == ErrorCode.DEPENDENCY_UNAVAILABLE


def test_a_multipart_upload_sends_every_part_and_its_etag(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"0123456789")
    (tmp_path / "README.md").write_text("stays here")
    upload_id, received, completed = str(uuid.uuid4()), {}, []

    def view(status: str, files: list) -> dict:
        return {"id": upload_id, "kind": "model", "status": status, "ref": f"upload:{upload_id}",
                "files": files, "part_size_bytes": 4}  # fmt: skip

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "s3.test":
            assert "Authorization" not in request.headers  # a presigned URL is its own auth
            received[request.url.path] = request.read()
            if request.url.path == "/config":  # sent with the headers its URL was signed with
                assert request.headers["If-None-Match"] == "*"
            return httpx.Response(200, headers={"ETag": f'"{request.url.path}"'})
        assert request.headers["Authorization"] == "Bearer bp_x"
        if request.url.path == "/v1/uploads":
            announced = json.loads(request.read())["files"]
            assert announced == [
                {"name": "config.json", "size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
                {
                    "name": "model.safetensors",
                    "size": 10,
                    "sha256": hashlib.sha256(b"0123456789").hexdigest(),
                },
            ]
            parts = [{"part_number": n, "url": f"http://s3.test/w/{n}"} for n in (1, 2, 3)]
            files = [
                {
                    "name": "config.json",
                    "size": 2,
                    "url": "http://s3.test/config",
                    "headers": {"If-None-Match": "*"},
                },
                {"name": "model.safetensors", "size": 10, "parts": parts},
            ]
            return httpx.Response(201, json=view("pending", files))
        completed.append(json.loads(request.read()))
        return httpx.Response(200, json=view("complete", []))

    with Client("http://api.test", "bp_x", transport=httpx.MockTransport(answer)) as client:
        assert client.uploads.model(tmp_path) == f"upload:{upload_id}"
    assert received == {"/config": b"{}", "/w/1": b"0123", "/w/2": b"4567", "/w/3": b"89"}
    etags = [{"part_number": n, "etag": f'"/w/{n}"'} for n in (1, 2, 3)]
    assert completed == [{"parts": {"model.safetensors": etags}}]


def test_the_cli_submits_uploads_waits_and_downloads(
    live_api, api_key, workers, tiny_llama, tmp_path, monkeypatch, capsys
):
    workers.ensure()
    monkeypatch.setenv("BLOCKPRUNE_API_URL", live_api)
    monkeypatch.setenv("BLOCKPRUNE_API_KEY", api_key)
    flags = ["--calibration", tiny_llama["calibration"], "--num-blocks", "2", "--samples", "4"]
    flags += ["--seq-len", "16", "--metadata", "via=cli", "--poll", "0.2", "--timeout", "60"]
    # The model is a local folder: uploaded first, then named by its upload:<id>.
    code = main(["jobs", "submit", "--model", str(tiny_llama["local_dir"]), *flags, "--wait"])
    out, err = capsys.readouterr()
    assert code == 0, err
    job_id = out.splitlines()[0]
    assert "uploading the model folder" in err and "succeeded; fetch it with" in out
    assert out.count("removed ") == 2  # a line per block, as a local prune prints them
    assert main(["jobs", "download", job_id, "--dest", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "pruning.json").is_file()
    capsys.readouterr()
    assert main(["jobs", "status", job_id]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["model"].startswith("upload:") and job["metadata"] == {"via": "cli"}
    assert (
        main(["jobs", "list", "--status", "succeeded"]) == 0 and job_id in capsys.readouterr().out
    )
    assert main(["jobs", "events", job_id]) == 0 and "iteration" in capsys.readouterr().out

    # Usage and user errors: exit 2, one line on stderr.
    with pytest.raises(SystemExit) as usage:
        main(["jobs", "submit", "--num-blocks", "two"])
    assert usage.value.code == 2 and "invalid int value" in capsys.readouterr().err
    assert main(["jobs", "status", str(uuid.uuid4())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not_found, HTTP 404" in err
    assert main(["jobs", "submit", "--model", str(tmp_path / "nothing"), *flags]) == 2
    assert "does not exist here" in capsys.readouterr().err
    assert main(["jobs", "cancel", job_id]) == 2  # it succeeded: a conflict
    assert "job_finished" in capsys.readouterr().err


# ---- with no worker running (the `sent` fixture): jobs stay queued ----------------------------
def test_list_pages_cancel_and_wait_timeout(client, live_api, api_key, sent, tiny_llama):
    made = [client.jobs.create(**job_body(tiny_llama, seed=n)).id for n in range(3)]
    wrapped = Wrapped(lambda request, send: send(request))
    with Client(live_api, api_key, transport=wrapped) as paging:
        listed = [job.id for job in paging.jobs.list(page_size=2)]
    every = httpx.get(
        f"{live_api}/v1/jobs?limit=100", headers={"Authorization": f"Bearer {api_key}"}
    )
    assert listed == [job["id"] for job in every.json()["data"]] and listed[:3] == made[::-1]
    assert len(listed) >= 3 and len(wrapped.seen) == math.ceil(len(listed) / 2)

    with pytest.raises(WaitTimeout) as caught:
        client.jobs.wait(made[0], timeout=0.3, poll=0.1)
    assert caught.value.job.status == JobStatus.QUEUED
    for job_id in made:
        assert client.jobs.cancel(job_id).status == JobStatus.CANCELLED
    assert client.jobs.cancel(made[0]).status == JobStatus.CANCELLED  # idempotent
    assert set(made) <= {job.id for job in client.jobs.list(status="cancelled")}
    assert not any(job.id in made for job in client.jobs.list(status=JobStatus.QUEUED))
    with pytest.raises(Conflict) as conflict:
        client.jobs.artifacts(made[0])
    assert conflict.value.code == ErrorCode.NOT_READY


@pytest.mark.parametrize("failure", ["answer lost", "503 once"])
def test_a_retried_create_makes_one_job(client, live_api, api_key, sent, tiny_llama, failure):
    def flaky(request, send):
        first = request.method == "POST" and not failed
        if first and failure == "503 once":
            failed.append(True)
            return httpx.Response(503, json={"error": {"code": "internal_error", "message": "x"}})
        response = send(request)  # the service handles it...
        if first:  # ...and the connection drops before the answer arrives
            failed.append(True)
            response.close()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response

    failed: list[bool] = []
    before = {job.id for job in client.jobs.list()}
    wrapped = Wrapped(flaky)
    with Client(live_api, api_key, transport=wrapped) as retrying:
        job = retrying.jobs.create(**job_body(tiny_llama, **SMALL))
    posts = [r for r in wrapped.seen if r.method == "POST"]
    assert len(posts) == 2 and len({r.headers["Idempotency-Key"] for r in posts}) == 1
    assert {j.id for j in client.jobs.list()} - before == {job.id}
    client.jobs.cancel(job.id)


def test_the_cli_exits_1_for_a_cancelled_job_and_3_on_timeout(
    live_api, api_key, sent, tiny_llama, monkeypatch, capsys
):
    monkeypatch.setenv("BLOCKPRUNE_API_URL", live_api)
    monkeypatch.setenv("BLOCKPRUNE_API_KEY", api_key)
    flags = ["--model", tiny_llama["model"], "--calibration", tiny_llama["calibration"]]
    assert main(["jobs", "submit", *flags, "--num-blocks", "1"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["jobs", "wait", job_id, "--timeout", "0.3", "--poll", "0.1"]) == 3
    assert main(["jobs", "cancel", job_id]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{job_id} cancelled")
    assert main(["jobs", "wait", job_id]) == 1
    assert f"job {job_id} cancelled" in capsys.readouterr().err
