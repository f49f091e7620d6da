"""`snapreg dashboard` in a real browser: headless Chromium driven by Selenium.

The command runs as its own process on a free port of 127.0.0.1, over a campaign
written through the registry (tests/support/dashboard_campaign.py). The browser
loads the campaign page and must show the newest workflow snapshot, the timeline
and the disk figures; then a registry writing the same SQLite file finds a new
workflow snapshot, and the open page must show it within 5 seconds, without a
reload. A screenshot of the page is kept in test-artifacts/.

The browser is the distribution's: ``apt-get install chromium chromium-driver``
(/usr/bin/chromium, /usr/bin/chromedriver; Selenium is pointed at that driver, so
it never downloads one). Without them the tests are skipped with the reason,
except when ``CI`` is ``true`` or ``SNAPREG_REQUIRE_BROWSER`` is set: then they
fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapreg.tools.reader import DatabaseReader
from support.dashboard_campaign import CAMPAIGN, DashboardCampaign, make_campaign

pytestmark = pytest.mark.slow  # a browser and a server process

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
#: What the issue promises: a new workflow snapshot on an open page within this.
LIVE_WITHIN = 5.0


def _browser_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or bool(
        os.environ.get("SNAPREG_REQUIRE_BROWSER")
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium under Selenium, or a skip (a failure in CI)."""
    problems = [
        f"{path} is missing" for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()
    ]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        problems.append(f"selenium is not installed ({err})")
    if problems:
        message = (
            "browser tests need Debian's chromium and chromium-driver (apt-get"
            " install chromium chromium-driver) and selenium: " + "; ".join(problems)
        )
        if _browser_required():
            pytest.fail(message + " (CI requires them)")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,2000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=Service(executable_path=str(CHROMEDRIVER)), options=options
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any) -> Any:
    """The browser on a blank page, its console log read out: a test of its own."""
    browser.get("about:blank")
    browser.get_log("browser")
    return browser


@pytest.fixture
def campaign(tmp_path: Path) -> DashboardCampaign:
    return make_campaign(tmp_path)


@pytest.fixture
def server(campaign: DashboardCampaign) -> Iterator[str]:
    """``snapreg dashboard`` on a free port of 127.0.0.1: its URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from snapreg.cli.main import main; main()",
            "dashboard",
            "--db",
            campaign.url,
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if match is None:
            process.kill()
            _, stderr = process.communicate(timeout=10)
            pytest.fail(f"snapreg dashboard did not start: {line!r} {stderr}")
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _wait(driver: Any, condition: Any, seconds: float, what: str) -> Any:
    from selenium.common.exceptions import (
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    # The live page replaces its parts while a condition reads them: an element
    # found a moment ago may be gone, which means "look again", not a failure.
    waiting = WebDriverWait(
        driver,
        seconds,
        poll_frequency=0.1,
        ignored_exceptions=(StaleElementReferenceException,),
    )
    try:
        return waiting.until(condition)
    except TimeoutException:
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard-failed.png"))
        pytest.fail(f"the page did not show {what} within {seconds} s")


def _shown_newest(driver: Any) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, "#restart .newest-workflow-snapshot")
    return found[0].get_attribute("data-id") if found else None


def _lazy_parts_loaded(driver: Any) -> bool:
    """Whether every part the page loads after it is shown shows its newest."""
    return bool(
        driver.execute_script(
            "return Array.from(document.querySelectorAll('.lazy[data-src]'))"
            ".every(e => e.dataset.loaded === e.dataset.src)"
        )
    )


def _severe_console_messages(driver: Any) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry.get("level") == "SEVERE"
    ]


def test_the_page_shows_the_newest_workflow_snapshot_and_a_new_one_live(
    page: Any, server: str, campaign: DashboardCampaign
) -> None:
    browser = page
    from selenium.webdriver.common.by import By

    with DatabaseReader(campaign.url) as reader:
        newest = reader.latest_workflow_snapshot(CAMPAIGN)
    assert newest is not None

    browser.get(f"{server}campaigns/{CAMPAIGN}")

    assert _shown_newest(browser) == str(newest.id)
    restart = browser.find_element(By.ID, "restart").text
    assert newest.path is not None and newest.path.name in restart
    _wait(
        browser,
        lambda driver: driver.find_elements(By.CSS_SELECTOR, ".timeline svg"),
        20,
        "the timeline",
    )
    assert (
        "resumed from run 1" in browser.find_element(By.CSS_SELECTOR, ".timeline").text
    )
    _wait(
        browser,
        lambda driver: driver.find_elements(By.CSS_SELECTOR, ".disk-figures"),
        20,
        "the disk figures",
    )
    _wait(
        browser,
        lambda driver: (
            "on" in driver.find_element(By.ID, "live").get_attribute("class")
        ),
        10,
        "that it is live",
    )

    with campaign.registry(2) as registry:
        found = campaign.register_more(registry, 8)
        registered = time.monotonic()
        assert found, "the stream must find a new workflow snapshot"
        newer = str(found[-1].id)
        _wait(
            browser,
            lambda driver: _shown_newest(driver) == newer,
            LIVE_WITHIN,
            f"workflow snapshot {newer}",
        )
        shown_after = time.monotonic() - registered
        # the run is being written now: the page says so, with the writer
        _wait(
            browser,
            lambda driver: driver.find_elements(
                By.CSS_SELECTOR, "#runs .status-running"
            ),
            LIVE_WITHIN,
            "run 2 running",
        )
        assert f"pid {os.getpid()}" in browser.find_element(By.ID, "runs").text
        _wait(browser, _lazy_parts_loaded, 20, "the timeline of the new state")
        title = browser.find_element(By.CSS_SELECTOR, ".timeline svg").text
        with DatabaseReader(campaign.url) as reader:
            in_run = len(reader.workflow_snapshots(CAMPAIGN, run=2))
        assert f"{in_run} workflow snapshots" in title
        ARTIFACTS.mkdir(exist_ok=True)
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1400, max(1000, min(int(height) + 40, 4000)))
        assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        browser.set_window_size(1400, 2000)

    assert shown_after < LIVE_WITHIN
    assert newer in browser.find_element(By.ID, "restart").text
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    assert _severe_console_messages(browser) == []


def test_a_run_page_and_an_unknown_page_in_the_browser(
    page: Any, server: str, campaign: DashboardCampaign
) -> None:
    browser = page
    from selenium.webdriver.common.by import By

    browser.get(f"{server}campaigns/{CAMPAIGN}/runs/1")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.snapshots tbody tr")
    with DatabaseReader(campaign.url) as reader:
        expected = reader.workflow_snapshots(CAMPAIGN, run=1)
    assert [row.get_attribute("data-id") for row in rows] == [
        str(item.id) for item in reversed(expected)
    ]
    assert (
        "Why no newer restart point" in browser.find_element(By.TAG_NAME, "main").text
    )
    _wait(
        browser,
        lambda driver: driver.find_elements(By.CSS_SELECTOR, ".timeline svg"),
        20,
        "the timeline",
    )

    browser.get(f"{server}campaigns/no-such-campaign")
    assert browser.find_element(By.CSS_SELECTOR, "h1.error").text == "404 Not found"
    assert (
        "no campaign 'no-such-campaign'"
        in browser.find_element(By.CSS_SELECTOR, ".message").text
    )
    # the 404 itself is logged, nothing else
    messages = _severe_console_messages(browser)
    assert all("404" in message for message in messages), messages
