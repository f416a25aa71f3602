"""What the console's browser tests share: calls through the `openai` client and the admin
API, and steps in the pages (sign in, open a page, fill a form)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from playwright.sync_api import Page, expect

from bastion.admin.client import AdminClient
from tests.browser.conftest import MODEL
from tests.support.browser import Tab, sign_in
from tests.support.clients import openai_client
from tests.support.gateway import GatewayProcess

XSS = "<img src=x onerror=alert(1)>"


def chat(base_url: str, key: str) -> str:
    client = openai_client(base_url, key)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    return answer.choices[0].message.content or ""


def session_status(base_url: str, cookie: str) -> int:
    """What ``GET /ui/api/session`` answers to this cookie header, outside the browser."""
    request = urllib.request.Request(base_url + "/ui/api/session", headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def user_with_key(admin: AdminClient, name: str, role: str = "user") -> str:
    admin.call("users.create", name=name, role=role)
    return str(admin.call("keys.create", user=name, name="test")["secret"])


def requests_of(admin: AdminClient, user: str) -> int:
    rows = admin.call("usage", by=["user"], period="all", user=user)["data"]
    return sum(int(row["requests"]) for row in rows)


def submit(page: Page, form: str, **values: str) -> None:
    """Fills the named controls of a form (text typed, menus chosen), then submits it."""
    for name, value in values.items():
        control = page.locator(f"{form} [name={name}]")
        if control.evaluate("el => el.tagName") == "SELECT":
            control.select_option(value)
        else:
            control.fill(value)
    page.locator(f"{form} button[type=submit]").click()


def wait_for_requests(admin: AdminClient, user: str, count: int) -> None:
    """Until the usage records (written about once a second) hold ``count`` of ``user``'s."""
    deadline = time.monotonic() + 15
    while requests_of(admin, user) < count:
        assert time.monotonic() < deadline, "the usage records were not written"
        time.sleep(0.2)


def signed_in(tab: Tab, gateway: GatewayProcess, key: str, route: str) -> Page:
    """The tab's page, signed in with ``key`` and showing ``route``."""
    sign_in(tab.page, gateway.url, key)
    go(tab.page, gateway.url, route)
    return tab.page


def go(page: Page, base_url: str, route: str) -> None:
    page.goto(f"{base_url}/ui/#{route}")
    expect(page.locator("main h1")).to_be_visible()
