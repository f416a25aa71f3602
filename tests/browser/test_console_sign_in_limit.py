"""The sign-in page under the gateway's sign-in rate limit (``console.sign_in_attempts``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import console_config
from tests.support.browser import Tab
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    state = tmp_path_factory.mktemp("state")
    process = GatewayProcess(console_config(upstream, state, {"sign_in_attempts": 2}), state)
    try:
        yield process
    finally:
        process.stop()


def test_too_many_sign_ins_are_told_to_wait_even_with_the_right_key(
    tab: Tab, gateway: GatewayProcess, admin_key: str
) -> None:
    page = tab.page
    page.goto(gateway.url + "/ui/")
    statuses = []
    for key in ("bst_" + "y" * 38, "bst_" + "z" * 38, admin_key):
        page.locator("#key").fill(key)
        with page.expect_response(lambda r: r.url.endswith("/ui/api/session")) as answer:
            page.locator("#signin-form button[type=submit]").click()
        statuses.append(answer.value.status)
    assert statuses == [401, 401, 429]
    expect(page.locator(".signin .notice")).to_have_text(
        "Too many attempts. Please wait a moment and try again."
    )
    expect(page.locator(".sidebar")).to_have_count(0)
