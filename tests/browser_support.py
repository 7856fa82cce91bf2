"""What the browser test modules share: Debian's Chromium under Playwright, its fixtures, and the artifacts folder.

Chromium comes from Debian (``run_tests.sh`` installs it, see ``launch_utils.ensure_chromium``; ``CHROMIUM_PATH``
points elsewhere); Playwright drives it through ``executable_path`` and never downloads a browser. A test module
calls :func:`require_browser` at import, which skips the module (saying why) where either is missing, and
loads this module as a plugin for its fixtures (``browser``, ``artifacts``)::

    pytest_plugins = ["browser_support"]
    sync_api = require_browser()

Servers are started with ``test_api_server.spawn_server`` / ``wait_up`` (spawned together, waited for later, so
that their start-ups overlap).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium")
#: No sandbox (tests may run as root in a container), no GPU, and nothing that would reach beyond localhost.
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync", "--disable-quic"]
TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1400, "height": 1100}


def require_browser() -> ModuleType:
    """``playwright.sync_api``, or skip the calling test module when Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run ./run_tests.sh (it installs Debian's chromium as root) or "
                    "apt-get install chromium", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-test.txt")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """``<pytest base temp>/test-artifacts``: screenshots and server logs of the browser tests (path printed)."""
    folder = tmp_path_factory.getbasetemp() / "test-artifacts"
    folder.mkdir(exist_ok=True)
    yield folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nbrowser test screenshots and server logs: {folder}")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module (each test opens its own context, so cookies and storage are fresh)."""
    sync_api = require_browser()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def new_page(browser, url: str, ready_selector: str, **context_options: object):
    """A fresh context and page on ``url``, waited for until ``ready_selector`` is in the page and the page-load
    event has filled the controls (``body[data-webui-loaded]``, set by ``assets.LOADED_JS``): a control edited
    earlier would be overwritten by the load event's reply, which a busy machine can delay by seconds."""
    page = browser.new_context(viewport=VIEWPORT, **context_options).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector(ready_selector)
    page.wait_for_selector("body[data-webui-loaded=true]", state="attached")
    return page


def shot(page, folder: Path, name: str) -> None:
    """A full-page screenshot ``folder/name.png``."""
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
