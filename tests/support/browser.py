"""Headless Chromium from the system's packages, driven by Playwright, for the console's tests
and screenshots.

Playwright's own browser downloads are never used (``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD``):
``scripts/setup --test`` installs Debian's ``chromium`` and Playwright launches that binary.
A missing Chromium fails the tests that need it, with what to install; it never skips them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    ViewportSize,
    sync_playwright,
)

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

VIEWPORT: ViewportSize = {"width": 1280, "height": 800}


def chromium_path() -> str:
    """The system Chromium; raises with what to install when there is none."""
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError(
        "no chromium: the console's browser tests need Debian's chromium package "
        "(scripts/setup --test installs it as root, or: apt-get install chromium)"
    )


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless system Chromium, closed on exit."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A page in a fresh browser context (its own cookies), with what it noticed: every
    JavaScript dialog (alert, confirm: the console opens none, so one is an injected script)
    and every uncaught page error."""

    context: BrowserContext
    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused_by_policy: list[str] = field(default_factory=list)
    """Console messages of the Content-Security-Policy refusing something."""

    def close(self) -> None:
        self.context.close()


def open_tab(browser: Browser) -> Tab:
    context = browser.new_context(viewport=VIEWPORT)
    tab = Tab(context, context.new_page())

    def on_dialog(dialog: Dialog) -> None:
        tab.dialogs.append(dialog.message)
        dialog.dismiss()

    tab.page.on("dialog", on_dialog)
    tab.page.on("pageerror", lambda exc: tab.errors.append(str(exc)))

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            tab.refused_by_policy.append(message.text)

    tab.page.on("console", on_console)
    return tab


def sign_in(page: Page, base_url: str, key: str) -> None:
    """Signs in to the console at ``base_url`` with ``key`` and waits for the sidebar."""
    page.goto(base_url + "/ui/")
    page.locator("#key").fill(key)
    page.locator("#signin-form button[type=submit]").click()
    page.locator(".sidebar, .signin .notice").first.wait_for()
    refused = page.locator(".signin .notice")
    if refused.count():
        raise AssertionError(f"the console refused the sign-in: {refused.inner_text()}")
