"""Debian's Chromium driven by playwright, for the browser tests."""

from __future__ import annotations

import contextlib
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def chromium_page(**context):
    """A page of a fresh headless Chromium; ``context`` goes to ``new_page`` (e.g. locale="zh-CN")."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(**context)
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            browser.close()
