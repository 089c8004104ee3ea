"""Webhooks that cannot be turned against the service: per-tenant signatures, the checked
address is the one connected to, and a slow receiver stalls neither the reaper nor a lock."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from sqlalchemy import text
from svc.test_svc_jobs import WebhookReceiver
from svc.test_svc_reaper import delivery_row


class DripReceiver:
    """Accepts, reads the request, then answers one byte every `every_s` seconds, forever."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed_after: list[float] = []
        threading.Thread(target=self._serve, args=(every_s,), daemon=True).start()

    def _serve(self, every_s: float) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            started = time.monotonic()
            try:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK" * 1000:
                    conn.sendall(bytes([byte]))
                    time.sleep(every_s)
            except OSError:
                self.closed_after.append(time.monotonic() - started)
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def quiet(workers):
    workers.stop()  # no worker's reaper delivering on its own schedule


def _finished_job(key_headers, service, webhook_url: str) -> str:
    """A job of the key's tenant, cancelled while queued: its webhook is due at once."""
    from service import queue

    body = {
        "model": "builtin:smollm2-135m",
        "calibration": "builtin:stdlib-docs",
        "num_blocks": 1,
        "webhook_url": webhook_url,
    }
    original, queue.send = queue.send, lambda *a, **k: None  # nobody runs it
    try:
        job_id = service.post("/v1/jobs", json=body, headers=key_headers).json()["id"]
    finally:
        queue.send = original
    service.post(f"/v1/jobs/{job_id}/cancel", headers=key_headers)
    return job_id


def test_a_tenant_cannot_sign_for_another(quiet, service, key_a, key_b):
    """B points its own job's webhook at A's receiver: A's check with A's secret rejects it."""
    from service.settings import get_settings
    from worker.webhooks import SIGNATURE_HEADER, deliver_due, verify

    secret_a = service.post("/v1/webhook-secret", headers=key_a).json()["webhook_secret"]
    secret_b = service.post("/v1/webhook-secret", headers=key_b).json()["webhook_secret"]
    assert secret_a != secret_b
    receiver = WebhookReceiver()
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        _finished_job(key_a, service, url)
        _finished_job(key_b, service, url)
        deliver_due(get_settings())
    finally:
        receiver.server.shutdown()
    assert len(receiver.received) == 2
    by_tenant = {}
    for headers, raw in receiver.received:
        signature = headers[SIGNATURE_HEADER]
        by_tenant[verify(secret_a, signature, raw), verify(secret_b, signature, raw)] = raw
    assert set(by_tenant) == {(True, False), (False, True)}  # each verifies with its own only
    # A rotated secret signs from now on; the old one no longer verifies.
    rotated = service.post("/v1/webhook-secret", headers=key_a).json()["webhook_secret"]
    assert rotated != secret_a


def test_a_rebinding_name_cannot_reach_a_private_address(quiet, service, key_a, monkeypatch):
    """The name answers a public address to the check and 127.0.0.1 afterwards: the request
    goes to the checked address, so the private receiver never sees it."""
    from service.settings import get_settings
    from worker import webhooks

    receiver = WebhookReceiver()
    answers = iter(["8.8.8.8"] + ["127.0.0.1"] * 100)
    real = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host == "hooks.rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    strict = get_settings().model_copy(
        update={"webhook_allow_private": False, "webhook_deadline_s": 1.0}
    )
    try:
        job_id = _finished_job(key_a, service, f"http://hooks.rebind.test:{receiver.port}/hook")
        webhooks.deliver_due(strict)
    finally:
        receiver.server.shutdown()
    assert receiver.received == []
    row = delivery_row(job_id)
    assert row.attempts == 1 and row.last_error in ("timeout", "connection failed")
    # And a name whose answers mix public and private addresses is refused outright.
    mixed = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 80)) for a in ("8.8.8.8", "10.0.0.5")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: mixed)
    with pytest.raises(ValueError, match="not a reachable public address"):
        webhooks.check_target("http://mixed.test/hook", allow_private=False)


def test_a_slow_drip_receiver_stalls_neither_the_reaper_nor_the_database(sent, service, key_a):
    """A receiver that drips a byte every 0.5 s: the reaper's pass returns at once and still
    re-queues a job whose lease expired; the attempt ends at its deadline, holding no lock."""
    from contract import JobSpec
    from service import jobstore
    from service.db import transaction
    from service.settings import get_settings
    from worker.leases import Lease
    from worker.reaper import reap_once
    from worker.webhooks import WebhookSender

    drip = DripReceiver(every_s=0.5)
    settings = get_settings().model_copy(update={"webhook_deadline_s": 2.0})
    tenant_a = service.get("/v1/tenant", headers=key_a).json()["id"]
    slow_job = _finished_job(key_a, service, f"http://127.0.0.1:{drip.port}/hook")
    with transaction() as s:
        spec = JobSpec(
            model="builtin:smollm2-135m", calibration="builtin:stdlib-docs", num_blocks=1
        )
        stuck, _ = jobstore.create_job(
            s,
            tenant_id=tenant_a,
            spec=spec,
            user_metadata={},
            webhook_url=None,
            idempotency_key=None,
            request_hash="x",
            max_attempts=3,
        )
    assert Lease.claim(stuck.id, "a-worker-that-dies", lease_s=0.1) is not None
    time.sleep(0.3)  # its lease expires
    sender = WebhookSender(settings)
    try:
        started = time.monotonic()
        requeued = reap_once(settings, webhooks=sender)
        reaper_pass = time.monotonic() - started
        assert stuck.id in requeued and sent.flush().count(stuck.id) == 1
        assert reaper_pass < 1.0, reaper_pass  # the drip is the sender's thread's problem
        # While the attempt drips, the delivery row is not locked: other writers go on.
        with transaction() as s:
            s.execute(
                text("SELECT 1 FROM webhook_deliveries WHERE job_id = :id FOR UPDATE NOWAIT"),
                {"id": slow_job},
            )
        deadline = time.monotonic() + 10
        while delivery_row(slow_job).last_error is None and time.monotonic() < deadline:
            time.sleep(0.1)
        while not drip.closed_after and time.monotonic() < deadline:
            time.sleep(0.1)  # the drip notices the hang-up at its next byte or two
    finally:
        sender.close()
        drip.close()
    row = delivery_row(slow_job)
    assert row.last_error == "timeout" and row.attempts == 1 and row.delivered_at is None
    # Hung up at the 2 s deadline (the drip notices within a byte or two), not hours later.
    assert drip.closed_after and drip.closed_after[0] < settings.webhook_deadline_s + 2.0
    events = service.get(f"/v1/jobs/{slow_job}/events", headers=key_a).json()["data"]
    assert all("Traceback" not in json.dumps(e) for e in events)


def test_a_refused_target_does_not_say_how_its_name_resolved(monkeypatch):
    """An internal name and an unknown one get the same answer: no DNS oracle for tenants."""
    from worker import webhooks

    def resolve(host, *args, **kwargs):
        if host == "internal.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 80))]
        raise socket.gaierror("Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    answers = set()
    for host in ("internal.test", "nowhere.test"):
        with pytest.raises(ValueError) as refused:
            webhooks.check_target(f"http://{host}/hook", allow_private=False)
        answers.add(str(refused.value).replace(host, "HOST"))
    assert answers == {"HOST is not a reachable public address"}


def test_job_events_name_a_worker_id_not_its_host_and_pid():
    import socket as sockets

    from service.transitions import worker_id

    owner = f"{sockets.gethostname()}:4242"
    shown = worker_id(owner)
    assert shown == worker_id(owner) != worker_id(f"{sockets.gethostname()}:4243")
    assert sockets.gethostname() not in shown and "4242" not in shown
