"""The whole stack with real processes: session service, three PHP web nodes, the balancer.

- ``stack``: one stack for the module (SQLite in a temporary directory), started with
  stack.runner exactly as ``make demo`` starts it.
- after every test, a PHP warning, notice or handler line in any node's error log fails it.
- ``chromium``: a headless Debian Chromium driven by Selenium through chromium-driver
  (no browser download), with a temporary profile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.runner import Stack, StackConfig

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    config = StackConfig(db_url=f"sqlite:///{workdir / 'sessions.db'}", workdir=workdir)
    with Stack(config) as running:
        yield running


@pytest.fixture(autouse=True)
def no_php_problems(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test on any new PHP warning/notice/error or handler line in a node's log."""
    if "stack" not in request.fixturenames:
        yield
        return
    running: Stack = request.getfixturevalue("stack")
    running.php_problems()  # lines of earlier tests were judged already
    yield
    problems = running.php_problems()
    assert not problems, f"PHP node logs: {problems}"


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[object]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} missing: apt-get install -y chromium chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log")),
        options=options,
    )
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
