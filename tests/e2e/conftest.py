"""Fixtures of the browser journeys: the whole platform and Debian's Chromium via Playwright."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.frontend.harness import FRONTEND_ENV
from tests.support.stack import Stack, running_stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0:
        pytest.fail("Debian's chromium is needed: apt-get install -y chromium")
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, timeout=900)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with running_stack(FRONTEND_ENV, prefix="gh-front-") as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # Module scope, not session: Playwright's sync API keeps an event loop running in this
    # thread while it is open, which would break every later asyncio test on this worker.
    ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
