"""Headless Chromium (Debian's) for the browser tests, and what they share.

Playwright's own browser build cannot be downloaded here: the tests drive
the system's ``chromium`` (``scripts/bootstrap.sh`` installs the package).
Without it they are skipped, except under CI, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator, Optional

import pytest
from playwright.sync_api import Browser, sync_playwright

__all__ = ["CHROMIUM_ARGS", "find_chromium", "launch_chromium"]

#: Flags for a headless Chromium that talks to nothing but 127.0.0.1.
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


def find_chromium() -> Optional[str]:
    """Debian's chromium, found at run time (Playwright's own build cannot be downloaded)."""
    found = shutil.which("chromium")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


@contextlib.contextmanager
def launch_chromium() -> Iterator[Browser]:
    """One headless Chromium, with a fresh temporary profile; skipped (CI: failed) without it."""
    executable = find_chromium()
    if executable is None:
        message = "chromium is not installed: apt-get install chromium (scripts/bootstrap.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()
