"""The HTTP contract: auth, tenant isolation, validation, idempotency, pagination, health."""

from __future__ import annotations

import pytest

BUILTIN = {"model": "builtin:smollm2-135m", "calibration": "builtin:stdlib-docs", "num_blocks": 2}
# A job that passes every check at submit (its config.json is there) and fails fast on a worker
# (no weights).
MISSING_MODEL = {
    "model": "s3://blockprune-test/models/config-only/",
    "calibration": "builtin:stdlib-docs",
    "num_blocks": 1,
    "samples": 2,
    "seq_len": 8,
}


@pytest.fixture(autouse=True, scope="module")
def config_only_model(s3_server, tiny_llama):
    config = s3_server.get_object(Bucket="blockprune-test", Key="models/tiny-llama/config.json")
    body = config["Body"].read()
    s3_server.put_object(Bucket="blockprune-test", Key="models/config-only/config.json", Body=body)


def test_auth_is_required(service, key_a):
    missing = service.get("/v1/jobs")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthenticated"
    assert service.get("/v1/jobs", headers={"Authorization": "Bearer bp_nope"}).status_code == 401
    assert service.get("/v1/jobs", headers={"Authorization": "Basic dXNlcjpwdw=="}).status_code == (
        401
    )
    assert service.get("/v1/jobs", headers=key_a).status_code == 200


def test_tenants_never_see_each_others_jobs(service, key_a, key_b):
    job = service.post("/v1/jobs", json=MISSING_MODEL, headers=key_a).json()
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("GET", f"/v1/jobs/{job['id']}/artifacts"),
    ]:
        answer = service.request(method, path, headers=key_b)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "not_found"
    assert job["id"] not in [j["id"] for j in service.get("/v1/jobs", headers=key_b).json()["data"]]
    assert job["id"] in [j["id"] for j in service.get("/v1/jobs", headers=key_a).json()["data"]]
    # B paging "after" A's job is told there is no such job, not given a page.
    assert service.get(f"/v1/jobs?after={job['id']}", headers=key_b).status_code == 422
    # And A's job was not touched by B's cancel.
    assert service.get(f"/v1/jobs/{job['id']}", headers=key_a).json()["status"] != "cancelling"


BAD_BODIES = [
    ({k: v for k, v in MISSING_MODEL.items() if k != "model"}, "model", "Field required"),
    ({**MISSING_MODEL, "model": "/etc/models/llama"}, "model", "s3://bucket/prefix/"),
    ({**MISSING_MODEL, "model": "builtin:gpt-9"}, "model", "unknown builtin model"),
    ({**MISSING_MODEL, "param_ratio": 0.2}, "num_blocks", "exactly one"),
    ({**MISSING_MODEL, "num_blocks": None}, "num_blocks", "exactly one"),
    ({**MISSING_MODEL, "num_blocks": 0}, "num_blocks", "greater than or equal to 1"),
    ({**MISSING_MODEL, "num_blocks": None, "param_ratio": 1.5}, "param_ratio", "less than 1"),
    ({**MISSING_MODEL, "samples": 0}, "samples", "greater than or equal to 1"),
    ({**MISSING_MODEL, "seq_len": 1}, "seq_len", "greater than or equal to 2"),
    ({**MISSING_MODEL, "dtype": "int8"}, "dtype", "float32"),
    ({**MISSING_MODEL, "block_types": "attn"}, "block_types", "mix"),
    ({**MISSING_MODEL, "calibration": "s3://blockprune-test/data.csv"}, "calibration", ".jsonl"),
    ({**MISSING_MODEL, "calibration": "builtin:poems"}, "calibration", "unknown builtin"),
    ({**MISSING_MODEL, "device": "cuda"}, "device", "Extra inputs are not permitted"),
    ({**MISSING_MODEL, "metadata": {f"k{i}": "v" for i in range(40)}}, "metadata", "at most 32"),
    ({**MISSING_MODEL, "metadata": {"k": 3}}, "metadata.k", "valid string"),
    ({**MISSING_MODEL, "webhook_url": "ftp://example.com/x"}, "webhook_url", "URL scheme"),
    ({**MISSING_MODEL, "method": "sleb"}, "num_blocks", "even number"),  # num_blocks 3
    ({**MISSING_MODEL, "method": "lamp"}, "method", "shortgpt"),
    ({**MISSING_MODEL, "evaluation": {"data": ["/etc/passwd.txt"]}}, "evaluation", "data[0]"),
    ({**MISSING_MODEL, "evaluation": {"tasks": ["./my_task.yaml"]}}, "evaluation", "tasks[0]"),
    ({**MISSING_MODEL, "evaluation": {"data": ["builtin:x"]}}, "evaluation.data.0", "unknown"),
    ({**MISSING_MODEL, "evaluation": {"seq_len": 8, "stride": 9}}, "evaluation", "stride"),
    ({**MISSING_MODEL, "evaluation": {"speed": "fast"}}, "evaluation.speed", "boolean"),
    # No coercion: a string or a boolean is not a number
    ({**MISSING_MODEL, "num_blocks": "3"}, "num_blocks", "valid integer"),
    ({**MISSING_MODEL, "num_blocks": True}, "num_blocks", "valid integer"),
    ({**MISSING_MODEL, "heal": "yes"}, "heal", "valid boolean"),
    ({**MISSING_MODEL, "parallelism": "2"}, "parallelism", "valid integer"),
    # Shapes the builtin model (30 layers, 8,192 positions) cannot take, refused at submit
    ({**BUILTIN, "samples": 1, "seq_len": 131072}, "seq_len", "8,192 positions"),
    ({**BUILTIN, "num_blocks": 61}, "num_blocks", "at most the model's 60 mix blocks"),
    ({**BUILTIN, "num_blocks": 10**12}, "num_blocks", "at most the model's 60 mix blocks"),
    ({**BUILTIN, "block_types": "mlp", "num_blocks": 31}, "num_blocks", "30 mlp blocks"),
    ({**BUILTIN, "evaluation": {"seq_len": 16384}}, "evaluation.seq_len", "8,192 positions"),
]


@pytest.mark.parametrize(("body", "field", "reason"), BAD_BODIES)
def test_bad_bodies_are_422_naming_the_field(service, key_a, body, field, reason):
    answer = service.post("/v1/jobs", json=body, headers=key_a)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and reason in error["message"], error


def test_malformed_json_is_422(service, key_a):
    answer = service.post(
        "/v1/jobs", content=b"{not json", headers={**key_a, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_request"


def test_idempotency_key_returns_the_same_job(service, key_a, key_b):
    headers = {**key_a, "Idempotency-Key": "order-42"}
    first = service.post("/v1/jobs", json=MISSING_MODEL, headers=headers)
    again = service.post("/v1/jobs", json=MISSING_MODEL, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]

    changed = service.post("/v1/jobs", json={**MISSING_MODEL, "seed": 5}, headers=headers)
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    assert first.json()["id"] in changed.json()["error"]["message"]

    # Keys are per tenant, and no key means a new job each time.
    other = service.post(
        "/v1/jobs", json=MISSING_MODEL, headers={**key_b, "Idempotency-Key": "order-42"}
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    plain = [service.post("/v1/jobs", json=MISSING_MODEL, headers=key_a).json()["id"] for _ in "ab"]
    assert plain[0] != plain[1]


def test_cursor_pagination_and_status_filter(service, database):
    from .fixtures import _new_key

    headers = {"Authorization": f"Bearer {_new_key('tenant-pages')}"}
    ids = [
        service.post("/v1/jobs", json=MISSING_MODEL, headers=headers).json()["id"] for _ in "abc"
    ]
    page = service.get("/v1/jobs?limit=2", headers=headers).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = service.get(f"/v1/jobs?limit=2&after={ids[1]}", headers=headers).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False

    assert service.post(f"/v1/jobs/{ids[1]}/cancel", headers=headers).json()["status"] in (
        "cancelled",
        "cancelling",
    )
    only = service.get("/v1/jobs?status=cancelled", headers=headers).json()["data"]
    assert [j["id"] for j in only] == [ids[1]]
    assert service.get("/v1/jobs?limit=0", headers=headers).status_code == 422
    assert service.get("/v1/jobs?limit=1000", headers=headers).status_code == 422
    assert service.get("/v1/jobs?status=done", headers=headers).status_code == 422


def test_health_and_readiness(service, sent):
    from service import queue
    from service.settings import get_settings

    assert service.get("/healthz").json() == {"status": "ok"}
    queue.mark_reaper_pass()  # as a worker's reaper thread does after each pass
    ready = service.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = {"database": "ok", "broker": "ok", "storage": "ok"}
    assert ready.json()["checks"] == {**checks, "reaper": "ok"}

    # No reaper lately (no worker, no `blockprune reaper`): reported, the API still ready.
    queue._markers().delete(queue._reaper_key())
    alone = service.get("/readyz")
    assert alone.status_code == 200 and alone.json()["checks"] == {**checks, "reaper": "failed"}
    queue.mark_reaper_pass()

    broken = get_settings().model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9"})
    service.app.dependency_overrides[get_settings] = lambda: broken
    try:
        down = service.get("/readyz")
    finally:
        service.app.dependency_overrides.clear()
    assert down.status_code == 503
    # Which check failed, and nothing of why (no endpoint, no exception text): it needs no key.
    assert down.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "storage": "failed",
        "reaper": "ok",
    }
    assert service.get("/openapi.json").json()["paths"].keys() >= {"/v1/jobs", "/readyz"}
    assert service.get("/docs").status_code == 200


def test_an_upload_size_must_be_a_number_not_a_string(service, key_a):
    body = {"kind": "model", "files": [{"name": "config.json", "size": "10", "sha256": "0" * 64}]}
    answer = service.post("/v1/uploads", json=body, headers=key_a)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == "files.0.size" and "valid integer" in error["message"], error


@pytest.mark.parametrize("body", [b"[" * 5000, b"\xff\xfe", b'{"a": ' * 3000, b"{not json"])
def test_a_body_that_is_not_json_names_the_body_not_a_character_index(service, key_a, body):
    headers = {**key_a, "Content-Type": "application/json"}
    answer = service.post("/v1/jobs", content=body, headers=headers)
    assert answer.status_code in (400, 422), answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == "body", error
