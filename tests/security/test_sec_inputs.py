"""Tenant-scoped inputs: a tenant reads its own uploads and the shared prefixes, nothing else,
checked at submit and again in the worker; refusals name nothing of anyone else's."""

from __future__ import annotations

import pytest
from svc.fixtures import BUCKET
from svc.helpers import job_body, wait_for
from svc.test_svc_jobs import engine_result

from .helpers import announce, model_files, upload


@pytest.fixture(scope="module")
def b_model(service, key_b, tiny_llama) -> dict:
    """Tenant B's private model, uploaded through the API."""
    view = upload(service, key_b, "model", model_files(tiny_llama["local_dir"]))
    tenant_b = service.get("/v1/tenant", headers=key_b).json()
    return {"upload": view, "tenant": tenant_b}


def _downloads(workers) -> set[str]:
    root = workers.cache_dir / "s3"
    return {str(p) for p in root.rglob("*")} if root.exists() else set()


def test_an_uploaded_model_runs_for_its_owner(
    service, workers, key_b, tiny_llama, b_model, tmp_path
):
    workers.ensure()
    text = tiny_llama["calibration_path"].read_bytes()
    calibration = upload(service, key_b, "calibration", {"docs.txt": text})
    body = job_body(tiny_llama, model=b_model["upload"]["ref"], calibration=calibration["ref"])
    created = service.post("/v1/jobs", json=body, headers=key_b)
    assert created.status_code == 201, created.text
    job = wait_for(service, key_b, created.json()["id"], timeout=90)
    assert job["status"] == "succeeded", job
    assert job["model"] == b_model["upload"]["ref"]  # the job keeps the name it was given
    expected = engine_result(tiny_llama, tmp_path)
    assert job["removed"] == expected["removed"] and job["base_ppl"] == expected["base_ppl"]


def test_another_tenants_inputs_are_refused_at_submit(service, key_a, tiny_llama, b_model):
    b_id, b_upload = b_model["tenant"]["id"], b_model["upload"]["id"]
    before = service.get("/v1/jobs?limit=100", headers=key_a).json()["data"]
    attacks = {
        # B's upload by its id: A is told there is no such upload, nothing more.
        b_model["upload"]["ref"]: (404, "not_found"),
        f"s3://{BUCKET}/uploads/{b_id}/{b_upload}/": (422, "input_not_allowed"),
        f"s3://{BUCKET}/uploads/{b_id}/": (422, "input_not_allowed"),
        f"s3://{BUCKET}/uploads/x/../{b_id}/{b_upload}/": (422, "input_not_allowed"),
        f"s3://{BUCKET}/models//tiny-llama/": (422, "input_not_allowed"),
        "s3://another-bucket/models/tiny-llama/": (422, "input_not_allowed"),
        f"s3://{BUCKET}/jobs/": (422, "input_not_allowed"),  # other tenants' exports
    }
    for model, (status, code) in attacks.items():
        answer = service.post("/v1/jobs", json=job_body(tiny_llama, model=model), headers=key_a)
        assert answer.status_code == status, (model, answer.text)
        error = answer.json()["error"]
        assert error["code"] == code and error["field"] == "model", (model, error)
        assert "config.json" not in error["message"] and "safetensors" not in error["message"]
    calibration = f"s3://{BUCKET}/uploads/{b_id}/secret.txt"
    answer = service.post(
        "/v1/jobs", json=job_body(tiny_llama, calibration=calibration), headers=key_a
    )
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "calibration"
    after = service.get("/v1/jobs?limit=100", headers=key_a).json()["data"]
    assert len(after) == len(before)  # no job was made


def test_the_worker_refuses_a_foreign_input_too(service, workers, key_a, tiny_llama, b_model):
    """A job row that names B's upload, written without the API: the worker checks again and
    fails it before listing or downloading anything."""
    from contract import JobSpec
    from service import jobstore, queue
    from service.db import transaction

    workers.ensure()
    tenant_a = service.get("/v1/tenant", headers=key_a).json()["id"]
    foreign = f"s3://{BUCKET}/uploads/{b_model['tenant']['id']}/{b_model['upload']['id']}/"
    spec = JobSpec(**job_body(tiny_llama, model=foreign))
    cached = _downloads(workers)
    with transaction() as s:
        job, _ = jobstore.create_job(
            s,
            tenant_id=tenant_a,
            spec=spec,
            user_metadata={},
            webhook_url=None,
            idempotency_key=None,
            request_hash="direct",
            max_attempts=2,
        )
    queue.send("job", job.id)
    job = wait_for(service, key_a, job.id, timeout=60)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert job["error"]["code"] == "input_not_allowed" and job["error"]["field"] == "model"
    assert "config.json" not in job["error"]["message"]
    assert _downloads(workers) == cached  # nothing listed into the cache, nothing fetched


def test_hub_sources_follow_the_operators_setting(service, key_a, tiny_llama):
    from service.settings import get_settings

    def submit(settings_update: dict, model: str):
        changed = get_settings().model_copy(update=settings_update)
        service.app.dependency_overrides[get_settings] = lambda: changed
        try:
            return service.post("/v1/jobs", json=job_body(tiny_llama, model=model), headers=key_a)
        finally:
            service.app.dependency_overrides.clear()

    off = submit({"hf_allowed": False}, "hf:someone/some-model")
    assert off.status_code == 422 and off.json()["error"]["code"] == "input_not_allowed"
    other_org = submit({"hf_allowed_orgs": "acme,meta-llama"}, "hf:someone/some-model")
    assert (
        other_org.status_code == 422 and "acme, meta-llama" in other_org.json()["error"]["message"]
    )
    allowed = submit({"hf_allowed_orgs": "acme"}, "hf:acme/small-model")
    assert allowed.status_code == 201, allowed.text
    service.post(f"/v1/jobs/{allowed.json()['id']}/cancel", headers=key_a)


def test_uploads_refuse_what_is_never_loaded(service, key_a):
    def offer(kind, *names):
        files = [announce(n, b"0123456789") for n in names]
        return service.post("/v1/uploads", json={"kind": kind, "files": files}, headers=key_a)

    cases = [
        (offer("model", "config.json", "pytorch_model.bin"), "pickle weights"),
        (offer("model", "config.json"), "needs config.json and *.safetensors"),
        (offer("model", "../config.json", "model.safetensors"), "files.0.name"),
        (offer("model", "config.json", "model.safetensors", "run.sh"), "not a model file"),
        (offer("calibration", "a.txt", "b.txt"), "one .txt or .jsonl"),
        (offer("calibration", "data.csv"), "one .txt or .jsonl"),
    ]
    for answer, message in cases:
        assert answer.status_code == 422, answer.text
        assert message in answer.json()["error"]["message"], answer.json()


def test_an_upload_completes_only_as_announced(service, key_a):
    """A file that was not PUT, or is not the announced size, keeps the upload pending; a
    pending upload cannot be used by a job."""
    import httpx

    files = [announce("a.txt", b"12345")]
    view = service.post(
        "/v1/uploads", json={"kind": "calibration", "files": files}, headers=key_a
    ).json()
    early = service.post(f"/v1/uploads/{view['id']}/complete", json={}, headers=key_a)
    assert early.status_code == 422 and "was not uploaded" in early.json()["error"]["message"]
    put = view["files"][0]
    httpx.put(put["url"], content=b"1234", headers=put["headers"]).raise_for_status()  # 4, not 5
    short = service.post(f"/v1/uploads/{view['id']}/complete", json={}, headers=key_a)
    assert (
        short.status_code == 422 and "is 4 bytes, announced 5" in short.json()["error"]["message"]
    )
    body = {
        "model": "builtin:smollm2-135m",
        "calibration": view["ref"],
        "num_blocks": 1,
    }
    pending = service.post("/v1/jobs", json=body, headers=key_a)
    assert pending.status_code == 422 and pending.json()["error"]["code"] == "upload_incomplete"


def test_large_files_go_up_in_parts(service, key_a):
    """Above the multipart threshold a file gets one URL per part; completion needs every
    part's ETag and checks the size."""
    from service.settings import get_settings

    small_parts = get_settings().model_copy(
        update={"s3_multipart_threshold_mb": 5, "s3_multipart_chunk_mb": 5}
    )
    service.app.dependency_overrides[get_settings] = lambda: small_parts
    try:
        text = ("calibration text, " * 400_000).encode()[: 6 * 2**20 + 17]
        view = upload(service, key_a, "calibration", {"big.txt": text})
    finally:
        service.app.dependency_overrides.clear()
    assert view["status"] == "complete" and view["files"] == [
        {"name": "big.txt", "size": len(text), "url": None, "headers": None, "parts": None}
    ]
