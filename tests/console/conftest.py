"""Fixtures for the web console's browser tests (tests/console, run with the project's .venv by
scripts/test-console.sh): a real sandboxd on the Docker engine (started as the seed tests start
one, by tests/seeds/conftest.py's `serve`) and a real headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by selenium.

Docker, the binaries, Chromium and its driver are preconditions: without them the suite skips,
unless EXECD_TEST_REQUIRE_DOCKER=1 (CI), where they are failures. scripts/test-console.sh counts
a skip as a failure all the same.
"""

from __future__ import annotations

import importlib.util
import secrets
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "target/console-shots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# The seed tests' starter: one way to run a sandboxd in tests, not two.
_spec = importlib.util.spec_from_file_location("seeds_conftest", REPO / "tests/seeds/conftest.py")
seeds = importlib.util.module_from_spec(_spec)
sys.modules["seeds_conftest"] = seeds
_spec.loader.exec_module(seeds)


@pytest.fixture(scope="session")
def sandboxd():
    with seeds.serve("console-sandboxd", secrets.token_hex(16)) as d:
        yield d


@pytest.fixture(scope="session")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        seeds.unavailable("chromium and chromium-driver are not installed (scripts/setup.sh installs them)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        seeds.unavailable("selenium is not in the venv (scripts/setup.sh installs it)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    # Browser console messages, to find Content-Security-Policy violations.
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The Debian driver, named: selenium must not try to fetch one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed step leaves a screenshot of what the browser showed (failed-<test>.png)."""
    outcome = yield
    report = outcome.get_result()
    driver = item.funcargs.get("console") or item.funcargs.get("browser")
    if report.when == "call" and report.failed and driver is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / f"failed-{item.name}.png"))
