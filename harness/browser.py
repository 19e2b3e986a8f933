"""Headless Chromium for the watch page (tests/test_web.py, bench/web_latency.py)."""

from __future__ import annotations

from typing import Any

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own browser download cannot work here
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def launch_chromium(playwright: Any) -> Any:
    """The system's Chromium, headless, driven by Playwright (`sync_playwright()`'s object)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
