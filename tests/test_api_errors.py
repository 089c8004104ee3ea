"""The API picks an error's HTTP status from its code, in one table, and documents each one."""

import re
from pathlib import Path

from api.errors import ERROR_RESPONSES, HTTP_STATUS, ApiError, http_status, not_found
from contract import ErrorCode

API = Path(__file__).resolve().parents[1] / "api"


def test_every_code_has_one_status_and_the_docs_list_it():
    for code in ErrorCode:
        status = http_status(code)
        assert 400 <= status < 600, code
        if status < 500 and code is not ErrorCode.METHOD_NOT_ALLOWED:  # 405: no route has it
            assert status in ERROR_RESPONSES, f"{code}: {status} is not in the OpenAPI responses"
    assert (
        http_status(ErrorCode.INVALID_INPUT) == 422 and http_status(ErrorCode.DOES_NOT_FIT) == 422
    )
    assert set(HTTP_STATUS.values()) >= {401, 404, 409, 413, 429, 503}


def test_an_error_takes_its_status_from_its_code():
    assert ApiError(ErrorCode.QUOTA_EXCEEDED, "full").status_code == 429
    assert ApiError(ErrorCode.JOB_FINISHED, "done").status_code == 409
    assert not_found("x").status_code == 404 and not_found("x").code is ErrorCode.NOT_FOUND


def test_no_raise_site_picks_a_status():
    """A status written at a raise site could drift from the table; the API has none."""
    sources = {p: p.read_text() for p in API.rglob("*.py")}
    picked = [
        f"{p.relative_to(API.parent)}: {m.group(0)}"
        for p, text in sources.items()
        for m in re.finditer(r"ApiError\(\s*\d{3}|status_code=[45]\d\d", text)
    ]
    assert picked == []


def test_a_database_outage_is_a_503_with_retry_after(monkeypatch):
    """PostgreSQL down (issue 23): the API key's lookup fails with OperationalError, and the
    client gets a 503 to retry, naming no host; liveness does not need the database."""
    import uuid

    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine
    from sqlalchemy.exc import IntegrityError, OperationalError

    import api.deps
    from api.app import create_app

    dead = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/gone")
    monkeypatch.setattr(api.deps, "get_engine", lambda: dead)
    app = create_app()

    def raises(error: Exception):
        def route() -> None:
            raise error

        return route

    app.add_api_route("/lost", raises(OperationalError("SELECT 1", {}, Exception("closed"))))
    app.add_api_route("/bug", raises(IntegrityError("INSERT", {}, Exception("duplicate"))))
    client = TestClient(app, raise_server_exceptions=False)
    for path in (f"/v1/jobs/{uuid.uuid4()}", "/lost"):
        answer = client.get(path, headers={"Authorization": "Bearer bp_x"})
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "2", answer.text
        error = answer.json()["error"]
        assert error["code"] == "dependency_unavailable" and "database" in error["message"]
        assert "127.0.0.1" not in answer.text and "gone" not in answer.text
    bug = client.get("/bug")  # a database error that is no outage stays a bug: 500
    assert bug.status_code == 500 and bug.json()["error"]["code"] == "internal_error"
    assert client.get("/healthz").status_code == 200
