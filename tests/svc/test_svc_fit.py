"""The API refuses at submit a job whose search cannot fit a worker's declared memory."""

from __future__ import annotations

from svc.fixtures import BUCKET
from svc.helpers import job_body


def submit(service, headers, settings_update: dict, body: dict):
    from service.settings import get_settings

    changed = get_settings().model_copy(update=settings_update)
    service.app.dependency_overrides[get_settings] = lambda: changed
    try:
        return service.post("/v1/jobs", json=body, headers=headers)
    finally:
        service.app.dependency_overrides.clear()


def test_builtin_model_is_planned_without_loading_it(service, key_a, tiny_llama):
    body = job_body(tiny_llama, model="builtin:smollm2-135m", samples=64, seq_len=512)
    small = submit(service, key_a, {"worker_memory": 512 * 2**20}, body)
    assert small.status_code == 422, small.text
    error = small.json()["error"]
    assert error["code"] == "does_not_fit" and error["field"] == "samples"
    # the sums: the model (134.5M fp32 parameters) and the working tensors, against the memory
    assert "model 513.13 MiB" in error["message"] and "> 471.04 MiB free" in error["message"]
    budget = submit(service, key_a, {"worker_memory": 4 * 2**30}, {**body, "cache_budget": "8GiB"})
    assert budget.status_code == 422 and budget.json()["error"]["field"] == "cache_budget"
    assert "8.00 GiB does not fit" in budget.json()["error"]["message"]
    fits = submit(service, key_a, {"worker_memory": 24 * 2**30}, body)
    assert fits.status_code == 201, fits.text
    service.post(f"/v1/jobs/{fits.json()['id']}/cancel", headers=key_a)


def test_s3_model_is_planned_from_its_config_json(service, key_a, tiny_llama):
    body = job_body(tiny_llama, samples=8192, seq_len=128)  # attention scores: 2 GiB
    refused = submit(service, key_a, {"worker_memory": 2**30}, body)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "does_not_fit"
    fits = submit(service, key_a, {"worker_memory": 2**30}, job_body(tiny_llama))
    assert fits.status_code == 201, fits.text
    service.post(f"/v1/jobs/{fits.json()['id']}/cancel", headers=key_a)
    missing = submit(
        service,
        key_a,
        {"worker_memory": 2**30},
        job_body(tiny_llama, model=f"s3://{BUCKET}/models/no-such-model/"),
    )
    assert missing.status_code == 422, missing.text
    assert missing.json()["error"]["code"] == "missing_config", missing.text


def test_a_worker_memory_is_declared_out_of_the_box(service, key_a):
    """The review's 201 for a shape no worker holds: refused at submit by the default budget
    (24 GiB), which an operator raises or empties (no check)."""
    from service.settings import Settings

    assert Settings().worker_memory == 24 * 2**30
    body = {"model": "builtin:smollm2-135m", "calibration": "builtin:stdlib-docs"}
    body |= {"num_blocks": 2, "samples": 64, "seq_len": 8192}
    refused = service.post("/v1/jobs", json=body, headers=key_a)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "does_not_fit" and "BLOCKPRUNE_WORKER_MEMORY" in error["message"]
    unchecked = submit(service, key_a, {"worker_memory": None}, body)
    assert unchecked.status_code == 201, unchecked.text
    service.post(f"/v1/jobs/{unchecked.json()['id']}/cancel", headers=key_a)
