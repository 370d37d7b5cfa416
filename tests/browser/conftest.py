"""Browser tests: Playwright for Python driving the Debian Chromium (``executable_path``).

Playwright's own browser download is not used. ``make test`` installs Chromium with ``apt-get`` when it is
missing; these tests skip, saying why, only where no Chromium could be found or Playwright is not installed.
``DPFACE_CHROMIUM`` names another binary. Screenshots go to ``runs/browser-tests/`` (ignored by git).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpface_lib import RUNS_DIR

SCREENSHOTS = RUNS_DIR / "browser-tests"


def chromium_path() -> str | None:
    for candidate in (os.environ.get("DPFACE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium found: `apt-get install chromium` (make test does this as root), or set "
                    "DPFACE_CHROMIUM")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser) -> Iterator[object]:
    """A fresh page that records console errors, failed page scripts and failed requests."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url}"))
    page.on("response", lambda r: page.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture()
def screenshot():
    """``screenshot(page, name)`` writes ``runs/browser-tests/<name>.png`` and returns its path."""

    def take(page, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
