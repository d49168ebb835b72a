"""Test-only helpers for driving a real headless Chromium (DevTools Protocol) with a fake mic.

``chromium`` drives the browser, ``fakemic`` writes what its fake microphone plays.
"""

from __future__ import annotations

import os

import pytest

from tests.browser.chromium import find_chromium

REQUIRE_ENV = "E2E_REQUIRE_BROWSER"


def chromium_for_tests() -> str:
    """The Chromium binary for browser tests; skips the calling test when none is
    installed, or fails it instead when ``E2E_REQUIRE_BROWSER=1`` (CI)."""
    path = find_chromium()
    if path is not None:
        return path
    reason = "no Chromium found (apt-get install chromium, or set CHROMIUM_BIN)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires browser tests to run")
    pytest.skip(f"{reason}; set {REQUIRE_ENV}=1 to fail instead of skipping")
