from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from bastion.admin.client import AdminClient
from tests.support.browser import Tab, chromium, open_tab
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess

MODEL = "test-model"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """The system Chromium (a missing one fails here, with what to install). One per module:
    Playwright's synchronous API runs an event loop of its own while it is open, which the
    asynchronous tests of other modules could not start theirs beside."""
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def console_config(
    upstream: FakeUpstream, state: Path, console: dict[str, object] | None = None, **more: object
) -> dict[str, object]:
    """A gateway with a store (so the console is on), one model, prices (so the usage
    reports carry a cost), a daily token budget per user, and no configured credential: its
    first start prints an administrator's key. The tests sign in more often than the default
    ten times a minute that one address may."""
    return {
        "server": {"host": "127.0.0.1", "state_dir": str(state)},
        "models": [{"name": MODEL, "upstreams": [{"url": upstream.url}]}],
        "usage": {"prices": {"*": {"input": 0.5, "output": 1.5}}},
        "limits": {"per_user": {"tokens_per_day": 100_000}, "models": {MODEL: {"concurrency": 64}}},
        "console": {"sign_in_attempts": 1000, **(console or {})},
        **more,
    }


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    state = tmp_path_factory.mktemp("state")
    process = GatewayProcess(console_config(upstream, state), state)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def admin_key(gateway: GatewayProcess) -> str:
    return gateway.printed_admin_key()


@pytest.fixture(scope="module")
def admin(gateway: GatewayProcess, admin_key: str) -> AdminClient:
    """The admin API with the administrator's key (to set things up and to check them)."""
    return AdminClient(gateway.url, admin_key)


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    """A fresh browser context (no cookies) and its page; it must end with no page error."""
    opened = open_tab(browser)
    try:
        yield opened
    finally:
        opened.close()
    assert opened.errors == [], opened.errors
