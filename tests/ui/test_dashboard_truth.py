"""The dashboard tells the truth at every moment (issue 24): no figure of another job after a
failed load, the right words on ended jobs, the final PPL on a finished job, a list that shows
jobs submitted elsewhere, the address after sign-in, a form that starts afresh after a submit,
and a phone-sized list with nothing behind a sideways scroll. In headless chromium against the
real stack, as tests/ui/test_dashboard.py."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from svc.helpers import job_body, wait_for

from .test_dashboard import find, goto, no_horizontal_overflow, read_all, shown, text, wait

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def truth_key(database) -> str:
    from service.db import transaction
    from service.keys import create_key

    with transaction() as session:
        return create_key(session, "ui-truth").key


def _sign_in(driver: Any, base: str, key: str) -> None:
    driver.get(f"{base}/ui")
    wait(driver, lambda: shown(driver, "#signin-key"), what="the sign-in form")
    find(driver, "#signin-key").send_keys(key)
    find(driver, "#signin-form button").click()
    wait(driver, lambda: shown(driver, "#view-jobs"), what="the job list")


def test_the_dashboard_tells_the_truth(page, ui_server, truth_key, workers, tiny_llama):
    headers = {"Authorization": f"Bearer {truth_key}"}
    api = httpx.Client(base_url=ui_server, headers=headers, timeout=30)
    workers.ensure()
    done = wait_for(api, headers, api.post("/v1/jobs", json=job_body(tiny_llama)).json()["id"])
    assert done["status"] == "succeeded"
    workers.stop()  # what is submitted now stays queued: cancelled before it removes anything
    queued = api.post("/v1/jobs", json=job_body(tiny_llama)).json()["id"]
    assert api.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "cancelled"

    # 8: the address says where the user is after sign-in.
    _sign_in(page, ui_server, truth_key)
    wait(page, lambda: page.execute_script("return location.hash") == "#/jobs", what="#/jobs")

    # 4: a succeeded job shows its final PPL, not "–".
    goto(page, ui_server, f"#/jobs/{done['id']}")
    wait(page, lambda: text(page, "#job-live") == "final", what="the finished job")
    final = done["removed"][-1]
    assert text(page, "#job-best").startswith(f"{final['ppl']:.3f} (final"), text(page, "#job-best")

    # 1: a job that fails to load shows nothing of the one before.
    missing = str(uuid.uuid4())
    goto(page, ui_server, f"#/jobs/{missing}")
    wait(page, lambda: "not found" in text(page, "#job-error"), what="the failed load")
    for field in ("calibration", "attempts", "finished", "best", "base", "model"):
        assert text(page, f"#job-{field}") == "–", (field, text(page, f"#job-{field}"))
    assert text(page, "#job-created") == "" and text(page, "#job-live") == "not updating"
    assert page.execute_script("return document.getElementById('job-bar').style.width") == "0%"
    assert read_all(page, "#ppl-chart svg") == [] and read_all(page, "#layer-map svg") == []

    # 3: an ended job that removed nothing says so in words that fit it.
    goto(page, ui_server, f"#/jobs/{queued}")
    wait(page, lambda: text(page, "#job-live") == "final", what="the cancelled job")
    assert text(page, "#ppl-chart") == "The job ended before the base model's PPL was measured."
    assert text(page, "#layer-map") == "Nothing was removed."

    # 7: a job submitted elsewhere appears in the list without a press of Refresh.
    goto(page, ui_server, "#/jobs")
    wait(page, lambda: queued in read_all(page, "#jobs-table tbody tr", "data-job-id"))
    elsewhere = api.post("/v1/jobs", json=job_body(tiny_llama)).json()["id"]
    wait(
        page,
        lambda: elsewhere in read_all(page, "#jobs-table tbody tr", "data-job-id"),
        timeout=15,
        what="the job submitted elsewhere",
    )
    api.post(f"/v1/jobs/{elsewhere}/cancel")

    # 8: at 420 px the list is cards: nothing sideways, every cell named.
    page.set_window_size(420, 900)
    try:
        wait(page, lambda: no_horizontal_overflow(page), what="no sideways scroll at 420 px")
        labels = read_all(page, "#jobs-table tbody tr:first-child td", "data-label")
        assert labels == ["job", "status", "method", "model", "progress", "labels", "created"]
        right, width = page.execute_script(
            "const r = document.querySelector('#jobs-table tbody tr td:last-child')"
            ".getBoundingClientRect(); return [r.right, document.documentElement.clientWidth]"
        )
        assert right <= width, (right, width)
    finally:
        page.set_window_size(1280, 900)

    # 8: after a submit, the form is closed and back to its defaults.
    find(page, "#submit summary").click()
    default_samples = find(page, "#submit-form [name=samples]").get_attribute("value")
    for name, value in (("model", tiny_llama["model"]), ("calibration", tiny_llama["calibration"])):
        box = find(page, f"#submit-form [name={name}]")
        box.clear()
        box.send_keys(value)
    samples = find(page, "#submit-form [name=samples]")
    samples.clear()
    samples.send_keys("3")
    find(page, "#submit-form button[type=submit]").click()
    wait(page, lambda: "#/jobs/" in page.current_url, what="the submitted job's page")
    api.post(f"/v1/jobs/{page.current_url.rsplit('/', 1)[1]}/cancel")
    goto(page, ui_server, "#/jobs")
    assert not page.execute_script("return document.getElementById('submit').open")
    assert find(page, "#submit-form [name=samples]").get_property("value") == default_samples
