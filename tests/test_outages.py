"""What counts as an outage (worker.outages.transient), the waits between tries
(service.backoff) and the budget (through_outages), without any service running."""

from __future__ import annotations

import random

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from sqlalchemy.exc import IntegrityError, OperationalError

from contract import ErrorCode, UserError
from service.backoff import backoff_s, worth_an_event
from service.settings import Settings
from worker.outages import Dependency, DependencyUnavailable, through_outages, transient


def _client_error(code: str, status: int) -> ClientError:
    response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


def test_backoff_grows_to_its_cap_with_half_of_it_random():
    rng = random.Random(0)
    for tries in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (tries - 1))
        waits = [backoff_s(tries, 0.5, 30.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert max(waits) - min(waits) > ceiling / 4  # jittered, not in lockstep


def test_retry_events_thin_out_as_an_outage_lasts():
    assert [n for n in range(1, 40) if worth_an_event(n)] == [1, 2, 4, 8, 16, 32]


def _upload_failed_from(error: Exception) -> Exception:
    from boto3.exceptions import S3UploadFailedError

    try:
        try:
            raise error
        except ClientError as e:  # what boto3's upload_file does
            raise S3UploadFailedError(f"Failed to upload: {e}")  # noqa: B904
    except S3UploadFailedError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (EndpointConnectionError(endpoint_url="http://s3"), Dependency.S3),
        (_client_error("SlowDown", 503), Dependency.S3),
        (_client_error("InternalError", 500), Dependency.S3),
        (_upload_failed_from(_client_error("ServiceUnavailable", 503)), Dependency.S3),
        (_client_error("NoSuchKey", 404), None),
        (_client_error("AccessDenied", 403), None),
        (OperationalError("SELECT 1", {}, Exception("server closed the connection")), "db"),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), None),
        (UserError("model", "hub down", ErrorCode.HUB_UNREACHABLE), Dependency.HUB),
        (UserError("model", "no such file"), None),
        (ValueError("a bug"), None),
    ],
)
def test_what_counts_as_an_outage(error, expected, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert transient(error) == (Dependency.DATABASE if expected == "db" else expected)


def test_an_offline_hub_is_no_outage(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert transient(UserError("model", "not cached", ErrorCode.HUB_UNREACHABLE)) is None


def _settings(**budgets: float) -> Settings:
    return Settings().model_copy(
        update={"outage_backoff_base_s": 0.01, "outage_backoff_max_s": 0.02, **budgets}
    )


def test_an_outage_within_its_budget_is_waited_out():
    failures = [EndpointConnectionError(endpoint_url="http://s3")] * 3
    heard: list[tuple] = []

    def step() -> str:
        if failures:
            raise failures.pop()
        return "done"

    result = through_outages(
        step, _settings(), on_retry=lambda dep, tries, *_: heard.append((dep, tries))
    )
    assert result == "done"
    assert heard == [(Dependency.S3, 1), (Dependency.S3, 2), (Dependency.S3, 3)]


def test_past_its_budget_the_outage_fails_with_what_and_how_long():
    def step() -> None:
        raise EndpointConnectionError(endpoint_url="http://s3")

    with pytest.raises(DependencyUnavailable) as caught:
        through_outages(step, _settings(s3_outage_budget_s=0.1))
    assert caught.value.dependency == Dependency.S3 and caught.value.waited_s >= 0.1
    body = caught.value.to_json()
    assert body["code"] == "dependency_unavailable" and "S3_OUTAGE_BUDGET_S" in body["message"]


def test_a_real_error_and_another_dependency_are_not_retried():
    calls = []

    def step() -> None:
        calls.append(1)
        raise _client_error("NoSuchKey", 404)

    with pytest.raises(ClientError):
        through_outages(step, _settings())
    assert len(calls) == 1
    with pytest.raises(EndpointConnectionError):  # a database-only retry leaves S3 alone
        through_outages(
            lambda: (_ for _ in ()).throw(EndpointConnectionError(endpoint_url="x")),
            _settings(),
            only=(Dependency.DATABASE,),
        )


def test_a_stop_request_cuts_the_wait_short():
    def step() -> None:
        raise EndpointConnectionError(endpoint_url="http://s3")

    settings = _settings().model_copy(
        update={"outage_backoff_base_s": 60.0, "outage_backoff_max_s": 60.0}
    )
    with pytest.raises(EndpointConnectionError):
        through_outages(step, settings, should_stop=lambda: True)
