"""The reaper's other duties on the real database: re-sending a message that waited too long,
and delivering webhooks with retries, backoff and giving up. Also: the status machine refuses
an illegal change of a stored job."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from sqlalchemy import text

from .helpers import free_port


class FailingReceiver:
    """A webhook receiver that answers 500 to its first `failures` deliveries, then 204."""

    def __init__(self, failures: int) -> None:
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls += 1
                self.send_response(500 if receiver.calls <= failures else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def quiet(workers):
    """No test worker (its reaper would deliver and re-send on its own schedule)."""
    workers.stop()


def _finished_job_with_webhook(new_job, url: str) -> str:
    from contract import JobStatus
    from service.db import transaction
    from service.tables import Job
    from service.transitions import finish

    job_id = new_job(webhook_url=url)
    with transaction() as s:
        finish(s, s.get(Job, job_id, with_for_update=True), JobStatus.CANCELLED, reason="test")
    return job_id


def delivery_row(job_id: str):
    from service.db import get_engine

    with get_engine().connect() as conn:
        return conn.execute(
            text("SELECT * FROM webhook_deliveries WHERE job_id = :id"), {"id": job_id}
        ).one()


def _webhook_events(job_id: str) -> list[dict]:
    from service.db import transaction
    from service.jobstore import list_events

    with transaction() as s:
        return [e.data for e in list_events(s, job_id) if e.kind == "webhook"]


def _deliver_until(settings, predicate, timeout: float = 10.0) -> None:
    from worker.webhooks import deliver_due

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "webhook delivery did not settle"
        deliver_due(settings)
        time.sleep(0.05)


def test_webhook_is_retried_with_backoff_until_delivered(quiet, new_job):
    from service.settings import get_settings
    from worker.webhooks import deliver_due

    settings = get_settings().model_copy(update={"webhook_backoff_s": 0.5})
    receiver = FailingReceiver(failures=2)
    try:
        job_id = _finished_job_with_webhook(new_job, receiver.url)
        assert deliver_due(settings) >= 1 and receiver.calls == 1
        first = delivery_row(job_id)
        assert first.attempts == 1 and first.delivered_at is None and "500" in first.last_error
        deliver_due(settings)  # not due yet: the backoff holds it back
        assert receiver.calls == 1
        _deliver_until(settings, lambda: delivery_row(job_id).delivered_at is not None)
    finally:
        receiver.close()
    row = delivery_row(job_id)
    assert receiver.calls == 3 and row.attempts == 3 and row.gave_up_at is None
    assert _webhook_events(job_id) == [{"delivered": True, "attempts": 3}]


def test_webhook_gives_up_after_max_attempts(quiet, new_job):
    from service.settings import get_settings
    from worker.webhooks import deliver_due

    settings = get_settings().model_copy(
        update={"webhook_backoff_s": 0.05, "webhook_max_attempts": 3}
    )
    receiver = FailingReceiver(failures=1000)
    try:
        job_id = _finished_job_with_webhook(new_job, receiver.url)
        _deliver_until(settings, lambda: delivery_row(job_id).gave_up_at is not None)
        time.sleep(0.3)
        deliver_due(settings)  # given up: never tried again
    finally:
        receiver.close()
    row = delivery_row(job_id)
    assert receiver.calls == 3 and row.attempts == 3 and row.delivered_at is None
    [event] = _webhook_events(job_id)
    assert event["delivered"] is False and event["attempts"] == 3 and "500" in event["error"]


def test_a_message_that_waited_too_long_is_sent_again_once(sent, new_job):
    """With the setting lowered (not switched off): a queued job is re-sent only after it has
    waited `queued_requeue_after_s`, and then not again until it has waited that long anew."""
    from service.settings import get_settings
    from worker.reaper import reap_once

    settings = get_settings().model_copy(update={"queued_requeue_after_s": 1.0})
    job_id = new_job()
    assert job_id not in reap_once(settings)  # it has not waited yet
    time.sleep(1.2)
    assert job_id in reap_once(settings)
    assert job_id not in reap_once(settings)  # its wait starts over
    assert sent.flush().count(job_id) == 1
    time.sleep(1.2)
    assert job_id in reap_once(settings)
    assert sent.flush().count(job_id) == 2
    from service.db import transaction
    from service.jobstore import list_events

    with transaction() as s:
        kinds = [e.kind for e in list_events(s, job_id)]
    assert kinds == ["created", "requeued", "requeued"]


def test_an_illegal_status_change_is_refused_and_nothing_is_written(quiet, new_job):
    from contract import IllegalTransition, JobStatus
    from service.db import transaction
    from service.tables import Job
    from service.transitions import finish, set_status

    job_id = new_job()
    with transaction() as s:
        finish(s, s.get(Job, job_id, with_for_update=True), JobStatus.FAILED, reason="test")
    with pytest.raises(IllegalTransition, match="failed -> running"):
        with transaction() as s:
            set_status(s, s.get(Job, job_id, with_for_update=True), JobStatus.RUNNING)
    from service.jobstore import list_events

    with transaction() as s:
        assert s.get(Job, job_id).status == "failed"
        changes = [e.data["to"] for e in list_events(s, job_id) if e.kind == "status"]
    assert changes == ["failed"]


def test_a_message_still_waiting_in_the_queue_is_not_sent_again(sent, new_job):
    """A queued job whose message is merely waiting (its marker is in Redis) is not re-sent,
    however long it waits; once the message is gone (received, or lost with Redis), it is."""
    from service import queue
    from service.settings import get_settings
    from worker.reaper import reap_once

    settings = get_settings().model_copy(update={"queued_requeue_after_s": 1.0})
    job_id = new_job()
    queue._mark_waiting("job", job_id)  # what a send leaves in Redis
    assert queue.message_waiting("job", job_id)
    time.sleep(1.2)
    assert job_id not in reap_once(settings)
    time.sleep(1.2)
    assert job_id not in reap_once(settings)
    queue.message_received("job", job_id)  # as a worker does; a flushed Redis loses it too
    time.sleep(1.2)
    assert job_id in reap_once(settings)
    assert sent.flush().count(job_id) == 1
