"""Every failure in the one error shape, never a 500: the hand-written corpus of hostile
inputs, bad ids, and keys that are revoked."""

from __future__ import annotations

import subprocess
import sys

import pytest
from svc.helpers import REPO

from .corpus import REQUESTS


def assert_error_shape(answer) -> dict:
    from api.errors import ErrorBody

    assert answer.headers["content-type"].startswith("application/json"), answer.text[:200]
    body = answer.json()
    ErrorBody.model_validate(body)  # {"error": {"code": one of ErrorCode, "message", "field"?}}
    return body["error"]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS, ids=range(len(REQUESTS)))
def test_hostile_inputs_get_a_4xx_in_the_error_shape(service, key_a, method, path, body):
    headers = {**key_a, "Content-Type": "application/json"}
    answer = service.request(method, path, content=body, headers=headers)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    error = assert_error_shape(answer)
    if answer.status_code == 422 and body and (b"\\u0000" in body or b"\\ud" in body):
        assert error.get("field"), error  # the field with the bad character is named


def test_unauthenticated_and_unknown_routes_are_in_the_error_shape(service):
    for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/nope"), ("PUT", "/v1/jobs")]:
        answer = service.request(method, path)
        assert answer.status_code in (401, 404, 405), answer.text
        assert_error_shape(answer)


def test_a_revoked_key_is_refused_at_once(service, database):
    def cli(*args: str) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "blockprune", "keys", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    key = cli("create", "--tenant", "revocation").strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    assert service.get("/v1/jobs", headers=headers).status_code == 200
    listed = cli("list", "--tenant", "revocation")
    prefix = key[:12]
    [row] = [line for line in listed.splitlines() if line.startswith(prefix)]
    # columns: prefix, created (date time), last used (date time, or "-"), revoked ("-")
    columns = row.removeprefix(prefix).split()
    assert columns[-1] == "-"  # not revoked
    assert len(columns) == 5  # a last-used time is shown (yyyy-mm-dd hh:mm:ss), not "-"

    assert "revoked key" in cli("revoke", prefix)
    refused = service.get("/v1/jobs", headers=headers)
    assert refused.status_code == 401 and assert_error_shape(refused)["code"] == "unauthenticated"
    [row] = [line for line in cli("list", "--tenant", "revocation").splitlines() if prefix in line]
    assert row.split()[-1] != "-"  # the revocation time

    unknown = subprocess.run(
        [sys.executable, "-m", "blockprune", "keys", "revoke", "bp_nothing"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert unknown.returncode == 2 and "no key with prefix 'bp_nothing'" in unknown.stderr
