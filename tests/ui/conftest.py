"""The dashboard's tests: the real API under uvicorn on a free port (a browser needs a real HTTP
server), headless Debian chromium driven by Selenium through the machine's chromedriver, and on
failure a screenshot, the page and the browser's console under test-artifacts/ui/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from svc.helpers import REPO

ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WIDE = (1280, 900)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item: the browser fixture reads whether it failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def ui_server(live_api: str) -> str:
    """The API (with /ui) served by uvicorn on the session's database and S3."""
    return live_api


@pytest.fixture(scope="session")
def ui_key(database) -> str:
    """An API key of a tenant of its own: the page's job list holds only this module's jobs."""
    from service.db import transaction
    from service.keys import create_key

    with transaction() as session:
        return create_key(session, "ui-demo").key


def _driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-search-engine-choice-screen",
        f"--window-size={WIDE[0]},{WIDE[1]}",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path of our own: Selenium Manager never looks for (or downloads) one.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(
            f"no browser for the UI tests ({', '.join(missing)} missing): "
            "apt-get install chromium chromium-driver (scripts/test.sh does)"
        )
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")
    driver = _driver()
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, request) -> Iterator[Any]:
    """The browser, for one test: on its failure, what the page showed is kept."""
    browser.set_window_size(*WIDE)
    yield browser
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        save_failure(browser, request.node.name)


def save_failure(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = ARTIFACTS / name
    try:
        driver.save_screenshot(str(stem.with_suffix(".png")))
        stem.with_suffix(".html").write_text(driver.page_source)
        logs = driver.get_log("browser")
        stem.with_suffix(".console.txt").write_text(
            "\n".join(f"{e['level']} {e['message']}" for e in logs)
        )
    except Exception as e:  # the browser may be what failed
        stem.with_suffix(".error.txt").write_text(repr(e))
    print(f"\nUI failure kept in {stem}.*")
    return stem
