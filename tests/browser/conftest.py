"""The search page in a real headless Chromium, in front of a real `lookalike serve`.

Chromium is Debian's (``apt-get install -y --no-install-recommends chromium``), driven by
Playwright for Python; Playwright's own browser download is never used. The twin runs as a
user runs it: a subprocess on a free loopback port, its own data dir, 12 dataset photos
indexed through the upload event path before it serves.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Playwright, ViewportSize, sync_playwright

from tests.conftest import REPO_ROOT, dataset_photos
from tests.twin import running_twin

CHROMIUM = Path("/usr/bin/chromium")
#: Without the background-networking flags Chromium keeps calling home, and this closed
#: network refuses (and flags) those connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GALLERY_SIZE = 12
OWNER = "local"  # the twin's default dev owner
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}


@pytest.fixture(scope="session")
def gallery_photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The photos the twin's gallery starts with (copied: the twin takes a folder's first N)."""
    folder = tmp_path_factory.mktemp("gallery")
    copies = []
    for photo in dataset_photos()[:GALLERY_SIZE]:
        copies.append(folder / photo.name)
        shutil.copyfile(photo, copies[-1])
    return copies


@pytest.fixture(scope="session")
def server(gallery_photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`lookalike serve` on a free loopback port with a fresh data dir; yields its base URL."""
    data_dir = tmp_path_factory.mktemp("twin-data")
    options = ["--owner", OWNER, "--sample-gallery", str(gallery_photos[0].parent), "--sample-size", str(GALLERY_SIZE)]
    with running_twin(data_dir, *options) as (url, _):
        yield url


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium")
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """A fresh tab (own storage) on the search page, its handlers in place; fails the test on
    any uncaught script error."""
    context = browser.new_context(viewport=DESKTOP, base_url=server)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda message: _keep_script_errors(message, errors))
    tab.set_default_timeout(15_000)
    tab.goto("/")
    tab.wait_for_selector("body[data-ready]", state="attached")
    yield tab
    context.close()
    assert errors == [], f"the page logged script errors: {errors}"


def _keep_script_errors(message: ConsoleMessage, errors: list[str]) -> None:
    # The browser logs every 4xx/5xx answer as a console error; those are the API's answers.
    if message.type == "error" and "Failed to load resource" not in message.text:
        errors.append(message.text)


def screenshot(target: Page | Locator, name: str, *, full_page: bool = True) -> Path:
    """Keep what the page (or one part of it) looks like in test-artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if isinstance(target, Locator):
        target.page.wait_for_timeout(250)  # let the last transition settle: the picture is for people
        target.screenshot(path=str(path), animations="disabled")
    else:
        target.wait_for_timeout(250)
        target.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path
