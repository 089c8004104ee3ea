"""Metrics and logs against the real stack: the API's /metrics, a worker's metrics port, and
JSON log lines that name their job and request (docs/observability.md)."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import REPO, free_port, job_body, wait_for, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(seen: Samples, name: str, **labels: str) -> float:
    return seen.get((name, tuple(sorted(labels.items()))), 0.0)


def names(seen: Samples) -> set[str]:
    return {name for name, _ in seen}


def test_a_job_moves_the_metrics_and_its_log_lines_name_it(service, workers, key_a, tiny_llama):
    from service.logs import JsonFormatter
    from service.settings import get_settings

    port = free_port()
    worker = workers.start(env={"BLOCKPRUNE_WORKER_METRICS_PORT": str(port)})
    worker_url = f"http://127.0.0.1:{port}/metrics"
    lines = io.StringIO()  # the API's request lines, as `blockprune api` would write them
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    requests_log = logging.getLogger("api.requests")
    requests_log.addHandler(handler)
    requests_log.setLevel(logging.INFO)
    try:
        api_before = samples(service.get("/metrics").text)
        worker_before = samples(httpx.get(worker_url).text)
        body = job_body(tiny_llama, seed=21)  # 3 iterations over 8, 7, 6 candidates
        created = service.post(
            "/v1/jobs", json=body, headers={**key_a, "X-Request-ID": "metrics-test.1"}
        )
        assert created.status_code == 201 and created.headers["X-Request-ID"] == "metrics-test.1"
        job = wait_for(service, key_a, created.json()["id"], timeout=60)
        assert job["status"] == "succeeded", job

        def counted_by_the_worker() -> Samples | None:
            # The task counts the job when it ends, just after the job's last write.
            seen = samples(httpx.get(worker_url).text)
            return (
                seen if value(seen, "blockprune_worker_jobs_total", outcome="succeeded") else None
            )

        worker_after = wait_until(counted_by_the_worker, timeout=10, what="the worker's count")
        api_after = samples(service.get("/metrics").text)
    finally:
        requests_log.removeHandler(handler)
        workers.stop()

    assert {
        "blockprune_http_requests_total",
        "blockprune_http_request_duration_seconds_bucket",
        "blockprune_jobs",
        "blockprune_queue_depth",
        "blockprune_outbox_pending",
        "blockprune_stats_up",
    } <= names(api_after)
    assert value(api_after, "blockprune_stats_up", source="database") == 1
    assert value(api_after, "blockprune_stats_up", source="broker") == 1
    assert ("blockprune_queue_depth", (("queue", get_settings().queue),)) in api_after
    post = {"method": "POST", "route": "/v1/jobs"}
    counted = "blockprune_http_requests_total"
    assert value(api_after, counted, **post, status="201") == (
        value(api_before, counted, **post, status="201") + 1
    )
    timed = "blockprune_http_request_duration_seconds_count"
    assert value(api_after, timed, **post) == value(api_before, timed, **post) + 1
    # A route template in the labels, never a job's id.
    assert not any(created.json()["id"] in str(labels) for _, labels in api_after)
    jobs = "blockprune_jobs"
    succeeded = value(api_after, jobs, status="succeeded")
    assert succeeded >= value(api_before, jobs, status="succeeded") + 1
    assert {dict(labels)["status"] for name, labels in api_after if name == jobs} == {
        "queued", "running", "succeeded", "failed", "cancelling", "cancelled"
    }  # fmt: skip

    assert {
        "blockprune_worker_jobs_total",
        "blockprune_worker_items_total",
        "blockprune_worker_iteration_seconds_bucket",
        "blockprune_worker_candidate_seconds_bucket",
        "blockprune_worker_heartbeat_age_seconds",
    } <= names(worker_before)
    moved = {
        name: value(worker_after, name) - value(worker_before, name)
        for name in (
            "blockprune_worker_iteration_seconds_count",
            "blockprune_worker_candidate_seconds_count",
        )
    }
    assert moved == {
        "blockprune_worker_iteration_seconds_count": 3,
        "blockprune_worker_candidate_seconds_count": 8 + 7 + 6,
    }
    assert value(worker_after, "blockprune_worker_iteration_seconds_sum") > 0
    # The Grafana dashboard queries only series that exist.
    dashboard = (REPO / "deploy" / "grafana" / "blockprune.json").read_text()
    assert set(re.findall(r"blockprune_\w+", dashboard)) <= names(api_after) | names(worker_after)

    # Logs: every line of the worker's is a JSON object; the task's name its job.
    records = []
    for line in worker.log_path.read_text().splitlines():
        # Not the worker's log: Celery prints its shutdown, and billiard a pool process that the
        # stop signal ended ("Process 'ForkPoolWorker-1' pid:28093 exited with 'signal 15 ...").
        if not line or line.startswith("worker: ") or re.match(r"Process '\S+' pid:\d+ ", line):
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    assert {"time", "level", "logger", "message"} <= set(records[0])
    ended = [r for r in records if r.get("job_id") == job["id"] and "ended" in r["message"]]
    assert [r["message"] for r in ended] == [f"job {job['id']}: attempt 1 ended: succeeded"]
    api_lines = [json.loads(line) for line in lines.getvalue().splitlines()]
    mine = [r for r in api_lines if r.get("request_id") == "metrics-test.1"]
    assert len(mine) == 1 and mine[0]["route"] == "/v1/jobs" and mine[0]["status"] == 201


def test_request_ids_are_kept_when_sane_and_made_otherwise(service):
    kept = service.get("/healthz", headers={"X-Request-ID": "proxy-7f3a:01"})
    assert kept.headers["X-Request-ID"] == "proxy-7f3a:01"
    made = [
        service.get("/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        for bad in ("has spaces", "x" * 200, 'quote"d', "")
    ]
    assert all(len(new) == 32 for new in made) and len(set(made)) == len(made)  # one each


def test_metrics_can_require_a_token(service):
    from pydantic import SecretStr

    from service.settings import get_settings

    closed = get_settings().model_copy(update={"metrics_token": SecretStr("s3cret")})
    service.app.dependency_overrides[get_settings] = lambda: closed
    try:
        assert service.get("/metrics").status_code == 401
        wrong = service.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = service.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and "blockprune_jobs" in right.text
    finally:
        service.app.dependency_overrides.clear()


def test_a_slow_database_costs_the_scrape_its_job_series_not_the_scrape(monkeypatch):
    from service.metrics import ServiceStats, scrape_registry

    stats = ServiceStats("some-queue", timeout_s=0.3)
    monkeypatch.setattr(stats, "_database", lambda: time.sleep(3))
    began = time.monotonic()
    seen = samples(generate_latest(scrape_registry(stats)).decode())
    assert time.monotonic() - began < 1.5
    assert value(seen, "blockprune_stats_up", source="database") == 0
    assert "blockprune_jobs" not in names(seen)


def test_a_worker_pushes_to_a_pushgateway_and_deletes_its_group_at_stop():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import unquote

    from service.settings import Settings
    from worker.metrics import Exporter

    seen: list[tuple[str, str, bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append((self.command, unquote(self.path), self.rfile.read(length)))
            self.send_response(202)
            self.end_headers()

        do_PUT = do_DELETE = _record  # noqa: N815 (http.server's names)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    exporter = Exporter(Settings(pushgateway_url=url, pushgateway_interval_s=0.1))
    try:
        exporter.start()
        wait_until(lambda: seen, timeout=10, what="a push")
        exporter.stop()
    finally:
        server.shutdown()
    group = f"/metrics/job/blockprune_worker/instance/{exporter.group['instance']}"
    assert [(method, path) for method, path, _ in seen[:1]] == [("PUT", group)]
    assert b"blockprune_worker_jobs_total" in seen[0][2]
    assert seen[-1][:2] == ("DELETE", group)
