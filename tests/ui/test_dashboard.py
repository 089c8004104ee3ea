"""The dashboard at /ui in headless chromium against the real stack (uvicorn, PostgreSQL, Celery
workers, moto S3): sign in, submit a job from the form and watch it live, cancel another, read
the chart, the layer map, the evaluation and the artifacts, page and filter the list, a phone-
sized window, and tenant text (an XSS payload in metadata) shown as text.

BLOCKPRUNE_UI_SCREENSHOTS=1 also writes the screenshots of docs/dashboard.md to docs/img/."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import httpx
import pytest
from svc.fixtures import BUCKET
from svc.helpers import PATIENCE, REPO, job_body

pytestmark = pytest.mark.slow

DELAY_S = 1.5  # per search iteration (BLOCKPRUNE_TEST_ITERATION_DELAY_S): time to watch it
XSS = "<img src=x onerror=alert(1)>"
DOCS_IMG = REPO / "docs" / "img"


def test_ui_is_served_with_strict_security_headers(ui_server):
    page = httpx.get(f"{ui_server}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    for directive in (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    # No inline script or handler in the page: the CSP would refuse them.
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", page.text))
    assert not re.search(r"\son[a-z]+\s*=", page.text)
    script = httpx.get(f"{ui_server}/ui/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["content-security-policy"] == csp
    for path in ("/ui/nope.js", "/ui/..%2Fapp.py", "/ui/__init__.py"):
        assert httpx.get(f"{ui_server}{path}").status_code == 404, path


# --- Reading the page ----------------------------------------------------------------------


def wait(driver: Any, predicate, timeout: float = 30, what: str = "the page") -> Any:
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    retried = (
        NoSuchElementException,
        StaleElementReferenceException,
        ElementClickInterceptedException,
    )
    bound = timeout * PATIENCE  # a bound on a state, not a timing (svc.helpers.PATIENCE)
    return WebDriverWait(driver, bound, poll_frequency=0.1, ignored_exceptions=retried).until(
        lambda _: predicate(), message=f"waiting for {what}"
    )


def find(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def find_all(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


# The page redraws while a job is active (the list every 2 s, a job page every second): read it
# in one script call, with no element handle to go stale, and click with retries.
READ = """const [css, attr] = arguments;
return Array.from(document.querySelectorAll(css),
                  (e) => attr === null ? e.textContent.trim() : e.getAttribute(attr));"""


def read_all(driver: Any, css: str, attr: str | None = None) -> list[str | None]:
    return driver.execute_script(READ, css, attr)


def text(driver: Any, css: str) -> str:
    found = read_all(driver, css)
    return str(found[0]) if found else ""


def shown(driver: Any, css: str) -> bool:
    script = "const e = document.querySelector(arguments[0]); return !!e && e.checkVisibility()"
    return driver.execute_script(script, css)


def click(driver: Any, css: str) -> None:
    wait(driver, lambda: find(driver, css).click() or True, what=f"a click on {css}")


def iteration(driver: Any) -> int | None:
    found = re.match(r"(\d+) / ", text(driver, "#job-iteration"))
    return int(found.group(1)) if found else None


def job_rows(driver: Any) -> list[str | None]:
    return read_all(driver, "#jobs-table tbody tr", "data-job-id")


def goto(driver: Any, base: str, route: str) -> None:
    """Open /ui<route> and wait for the page to show it (a change of the hash alone is handled
    after get() returns: until then the old view is on the page)."""
    driver.get(f"{base}/ui{route}")
    wait(driver, lambda: driver.execute_script("return document.body.dataset.route") == route)


def docs_screenshot(driver: Any, name: str) -> None:
    """docs/img/<name>, the whole page at desktop width, when BLOCKPRUNE_UI_SCREENSHOTS=1."""
    if os.environ.get("BLOCKPRUNE_UI_SCREENSHOTS") != "1":
        return
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    height, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(1280, min(max(int(height), 700), 2400) + int(chrome))
    driver.save_screenshot(str(DOCS_IMG / name))
    driver.set_window_size(1280, 900)


def no_horizontal_overflow(driver: Any) -> bool:
    return driver.execute_script(
        "const d = document.documentElement; return d.scrollWidth <= window.innerWidth"
    )


# --- The scenario ----------------------------------------------------------------------------


def sign_in(driver: Any, base: str, key: str) -> None:
    driver.get(f"{base}/ui")
    wait(driver, lambda: shown(driver, "#signin-key"), what="the sign-in form")
    find(driver, "#signin-key").send_keys("bp_not-a-key")
    find(driver, "#signin-form button").click()
    wait(driver, lambda: "refused" in text(driver, "#signin-error"), what="a refused key")
    assert driver.execute_script("return sessionStorage.length") == 0
    find(driver, "#signin-key").send_keys(key)
    find(driver, "#signin-form button").click()
    wait(driver, lambda: shown(driver, "#view-jobs"), what="the job list")
    assert text(driver, "#who") == "tenant ui-demo"
    stored = driver.execute_script("return Object.values(sessionStorage)")
    assert stored == [key] and driver.execute_script("return document.cookie") == ""
    assert key not in driver.current_url


def submit_from_form(driver: Any, tiny: dict) -> str:
    from selenium.webdriver.support.ui import Select

    find(driver, "#submit summary").click()
    fields = {
        "model": tiny["model"],
        "calibration": tiny["calibration"],
        "num_blocks": "4",
        "samples": "4",
        "seq_len": "16",
        "evaluation": tiny["calibration"],
        "metadata": "team=search\nrun=dashboard demo",
    }
    for name, value in fields.items():
        box = find(driver, f"#submit-form [name={name}]")
        box.clear()
        box.send_keys(value)
    Select(find(driver, "#submit-form [name=method]")).select_by_visible_text("blockpruner")
    find(driver, "#submit-form [name=speed]").click()
    find(driver, "#submit-form button[type=submit]").click()
    found = wait(
        driver, lambda: re.search(r"#/jobs/([0-9a-f-]{36})$", driver.current_url), what="job page"
    )
    return found.group(1)


def watch_live_progress(driver: Any) -> None:
    """The page polls: the iteration it shows goes up while the job runs."""

    def searching() -> int | None:
        it = iteration(driver)
        running = text(driver, "#job-status") == "running" and text(driver, "#job-phase")
        return it if running == "searching" and it is not None and 1 <= it < 4 else None

    first = wait(driver, searching, timeout=60, what="an iteration of the search")
    assert text(driver, "#job-live") == "updating every second"
    scored = text(driver, "#job-scored")  # "–" between iterations (where the test delay is)
    assert scored == "–" or re.match(r"\d+ / \d+$", scored), scored
    assert re.match(r"\d+\.\d+", text(driver, "#job-base"))
    wait(driver, lambda: (iteration(driver) or 0) > first, timeout=30, what="the next iteration")
    docs_screenshot(driver, "dashboard-job-running.png")


def check_list_and_xss(driver: Any, running: str, queued: str) -> None:
    click(driver, "a[href='#/jobs']")
    wait(driver, lambda: job_rows(driver)[:2] == [queued, running], what="newest first")
    tags = read_all(driver, "tr td.labels .tag")
    assert f"team={XSS}" in tags and "team=search" in tags
    assert find_all(driver, "img") == []  # the payload is text, not an element
    [style] = read_all(driver, f"tr[data-job-id='{running}'] .bar-fill", "style")
    assert style is not None and style.startswith("width:")
    docs_screenshot(driver, "dashboard-jobs.png")


def cancel_from_its_page(driver: Any, job_id: str) -> None:
    click(driver, f"a[href='#/jobs/{job_id}']")
    wait(driver, lambda: text(driver, "#job-id") == job_id and shown(driver, "#cancel"))
    assert read_all(driver, "#job-metadata dd") == [XSS]
    assert find_all(driver, "img") == []
    click(driver, "#cancel")
    assert shown(driver, "#cancel-confirm")
    click(driver, "#cancel-yes")
    wait(driver, lambda: text(driver, "#job-status") == "cancelled", what="cancelled")
    wait(driver, lambda: find(driver, "#view-job").get_attribute("data-polling") == "stopped")
    assert not shown(driver, "#cancel")


def check_finished_job(driver: Any, base: str, job_id: str, headers: dict, s3: Any) -> None:
    goto(driver, base, f"#/jobs/{job_id}")  # a new route: the key stays with the tab
    wait(driver, lambda: text(driver, "#job-status") == "succeeded", timeout=90, what="success")
    wait(driver, lambda: find(driver, "#view-job").get_attribute("data-polling") == "stopped")
    wait(driver, lambda: find_all(driver, "#artifacts-table tbody tr"), what="the artifacts")
    job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers).json()
    removed = job["removed"]
    assert len(removed) == 4 and text(driver, "#job-iteration") == "4 / 4"

    # The chart: base PPL at step 0, then one point per removed block.
    assert len(find_all(driver, "#ppl-chart circle.point")) == len(removed) + 1
    assert find_all(driver, "#ppl-chart circle.pending") == []
    # The map: the removed cells, each labelled with its step.
    cells = driver.execute_script(
        "return Array.from(document.querySelectorAll('#layer-map rect.removed'),"
        " (c) => [c.dataset.block, Number(c.dataset.layer), c.dataset.step])"
    )
    assert sorted(map(tuple, cells)) == sorted(
        (r["block"], r["layer"], str(n)) for n, r in enumerate(removed, 1)
    )
    steps = sorted(str(step) for step in read_all(driver, "#layer-map text.step"))
    assert steps == ["1", "2", "3", "4"]

    # The evaluation table: the rows of core/report.py's table.
    assert shown(driver, "#evaluation")
    labels = read_all(driver, "#evaluation-table tbody th")
    assert labels[:2] == ["parameters", f"ppl {job['calibration']}"]
    assert "prefill tok/s" in labels and "peak memory MiB" in labels
    kinds = set(read_all(driver, "#events-table tr", "data-kind"))
    assert {"created", "iteration", "status"} <= kinds

    # Downloads: the presigned links give the bytes the export's manifest names.
    manifest_key = f"jobs/{job_id}/manifest.json"
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    expected = {f["name"]: f["sha256"] for f in manifest["files"]}
    names, hrefs = (
        read_all(driver, "#artifacts-table a"),
        read_all(driver, "#artifacts-table a", "href"),
    )
    links = {str(name): str(href) for name, href in zip(names, hrefs, strict=True)}
    assert set(links) == set(expected)
    for name in ("pruning.json", "model.safetensors"):
        content = httpx.get(links[name]).raise_for_status().content
        assert hashlib.sha256(content).hexdigest() == expected[name], name
    pruning = json.loads(httpx.get(links["pruning.json"]).content)
    assert pruning["num_layers_before"] == 4 and pruning["removed"] == removed
    docs_screenshot(driver, "dashboard-job-done.png")


def check_filter_and_paging(driver: Any, base: str, done: str, cancelled: str) -> None:
    from selenium.webdriver.support.ui import Select

    goto(driver, base, "#/jobs")
    wait(driver, lambda: len(job_rows(driver)) == 2, what="both jobs")
    Select(find(driver, "#status-filter")).select_by_value("cancelled")
    wait(driver, lambda: job_rows(driver) == [cancelled], what="the filtered list")
    assert driver.current_url.endswith("#/jobs?status=cancelled")
    goto(driver, base, "#/jobs?limit=1")
    wait(driver, lambda: job_rows(driver) == [cancelled] and shown(driver, "#more"))
    find(driver, "#more").click()
    wait(driver, lambda: job_rows(driver) == [cancelled, done], what="the next page")
    assert not shown(driver, "#more")


def check_narrow_window(driver: Any, base: str, job_id: str) -> None:
    driver.set_window_size(390, 844)
    if driver.execute_script("return window.innerWidth") != 390:  # window chrome, if any
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
        )
    driver.refresh()  # a reload: the route and the key survive it
    goto(driver, base, "#/jobs")
    wait(driver, lambda: len(job_rows(driver)) == 2)
    assert no_horizontal_overflow(driver)
    # The rows are cards: nothing hides behind a sideways scroll, not even inside the box.
    box = find(driver, "#view-jobs .scroll")
    assert driver.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", box)
    goto(driver, base, f"#/jobs/{job_id}")
    wait(driver, lambda: find_all(driver, "#artifacts-table tbody tr"))
    assert no_horizontal_overflow(driver)
    chart, layer_map = find(driver, "#ppl-chart"), find(driver, "#layer-map")
    assert chart.rect["x"] == layer_map.rect["x"]  # one column: the map below the chart
    assert layer_map.rect["y"] > chart.rect["y"]
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def sign_out(driver: Any) -> None:
    find(driver, "#signout").click()
    wait(driver, lambda: shown(driver, "#signin-key"), what="the sign-in form")
    assert driver.execute_script("return sessionStorage.length") == 0
    assert find_all(driver, "#jobs-table tbody tr") == []


def test_dashboard_end_to_end(page, ui_server, ui_key, workers, tiny_llama, s3_server):
    workers.ensure(DELAY_S)
    headers = {"Authorization": f"Bearer {ui_key}"}
    sign_in(page, ui_server, ui_key)
    running = submit_from_form(page, tiny_llama)
    watch_live_progress(page)

    # A second job (behind the first on the one worker), with an XSS payload as a label.
    body = job_body(tiny_llama, num_blocks=6, metadata={"team": XSS})
    created = httpx.post(f"{ui_server}/v1/jobs", json=body, headers=headers)
    assert created.status_code == 201, created.text
    queued = created.json()["id"]
    check_list_and_xss(page, running, queued)
    cancel_from_its_page(page, queued)

    check_finished_job(page, ui_server, running, headers, s3_server)
    check_filter_and_paging(page, ui_server, running, queued)
    check_narrow_window(page, ui_server, running)
    sign_out(page)

    severe = [e["message"] for e in page.get_log("browser") if e["level"] == "SEVERE"]
    unexpected = [m for m in severe if "status of 401" not in m]  # the refused key, on purpose
    assert unexpected == [], unexpected
