"""The web console's defences in a real browser: who may sign in, sessions that end when their
key does, user-written text that stays text, a cross-origin page that cannot use the session,
the read-only viewer, and requests built only from the declared operations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from bastion.admin.client import AdminClient
from tests.browser.helpers import (
    XSS,
    go,
    signed_in,
    submit,
    user_with_key,
)
from tests.support.browser import Tab, sign_in
from tests.support.gateway import GatewayProcess


def test_a_principal_without_admin_or_console_permission_is_refused(
    tab: Tab, gateway: GatewayProcess, admin: AdminClient
) -> None:
    key = user_with_key(admin, "plain-user", role="user")
    page = tab.page
    page.goto(gateway.url + "/ui/")
    page.locator("#key").fill(key)
    page.locator("#signin-form button[type=submit]").click()
    expect(page.locator(".signin .notice")).to_contain_text("may not use the console")
    expect(page.locator(".sidebar")).to_have_count(0)
    assert not any(c["name"] == "bastion_session" for c in tab.context.cookies())
    assert page.request.get(gateway.url + "/ui/api/session").status == 401


def test_user_controlled_text_is_shown_as_text(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    admin.call("teams.create", name="red-team", description=XSS)
    page = signed_in(tab, gateway, admin_key, "users")
    page.get_by_role("button", name="New user").click()
    submit(page, "#user-form", name=XSS)  # names have a rule: refused
    expect(page.locator("#messages .notice.bad")).to_contain_text("'name'")
    submit(page, "#user-form", name="mallory", description=XSS)
    expect(page.locator("#messages")).to_have_text("Created user mallory.")
    expect(page.locator("tr", has_text="mallory").locator("td", has_text=XSS)).to_have_text(XSS)

    go(page, gateway.url, "teams")
    expect(page.locator("[data-team=red-team] p", has_text=XSS)).to_have_text(XSS)
    go(page, gateway.url, "audit?since=3600&action=user.create")
    expect(page.locator("main tbody tr", has_text="mallory")).to_be_visible()
    assert page.locator("main img").count() == 0
    assert tab.dialogs == []


class _Attacker(BaseHTTPRequestHandler):
    """Another origin (same host, another port: the same site, so the browser does send a
    SameSite=Strict cookie) serving a page that posts to the gateway's admin API."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><title>prize</title>
<form id="attack" method="post" enctype="text/plain" action="{self.target}/admin/v1/users">
<input name='{{"name":"csrf-victim","role":"admin","description":"' value='"}}'>
<button type="submit">win</button></form>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def attacker(gateway: GatewayProcess) -> Iterator[str]:
    handler = type("Attacker", (_Attacker,), {"target": gateway.url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_cross_origin_page_cannot_use_the_session(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient, attacker: str
) -> None:
    page = tab.page
    sign_in(page, gateway.url, admin_key)
    # The session cookie alone is not enough, even from the console's own origin.
    status = page.evaluate(
        """async () => (await fetch('/admin/v1/users', {credentials: 'same-origin'})).status"""
    )
    assert status in (401, 403)

    page.goto(attacker)
    with page.expect_navigation() as landed:
        page.locator("#attack button").click()
    answer = landed.value
    assert answer is not None
    assert answer.status in (401, 403)
    page.goto(attacker)
    page.evaluate(
        """async (url) => {
            const body = JSON.stringify({name: 'csrf-victim', role: 'admin'});
            await fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include', body});
            try {  // a custom header needs a CORS preflight, which the gateway does not grant
                await fetch(url, {method: 'POST', credentials: 'include', body,
                    headers: {'X-CSRF-Token': 'guess', 'Content-Type': 'application/json'}});
            } catch (exc) { /* refused by the browser */ }
        }""",
        gateway.url + "/admin/v1/users",
    )
    names = {u["name"] for u in admin.call("users.list")["data"]}
    assert "csrf-victim" not in names


def test_a_console_viewer_sees_usage_only(
    tab: Tab, gateway: GatewayProcess, admin: AdminClient
) -> None:
    page = signed_in(
        tab, gateway, user_with_key(admin, "watcher", role="console-viewer"), "overview"
    )
    links = page.locator(".sidebar nav a").all_text_contents()
    assert links == ["Overview", "Usage", "Limits"]
    for route in ("overview", "usage", "limits"):
        go(page, gateway.url, route)
        expect(page.locator("main .notice.bad")).to_have_count(0)
    page.goto(gateway.url + "/ui/#users")
    expect(page.locator("main h1")).to_have_text("Overview")  # not offered: back to the start

    # Hiding is a courtesy: the server refuses what the permission does not allow.
    csrf = page.request.get(gateway.url + "/ui/api/session").json()["csrf"]
    headers = {"X-CSRF-Token": csrf}
    assert page.request.get(gateway.url + "/admin/v1/usage", headers=headers).status == 200
    assert page.request.get(gateway.url + "/admin/v1/users", headers=headers).status == 403
    created = page.request.post(
        gateway.url + "/admin/v1/users", headers=headers, data={"name": "sneaky"}
    )
    assert created.status == 403
    assert "sneaky" not in {u["name"] for u in admin.call("users.list")["data"]}


def test_revoking_the_signed_in_key_ends_the_session(
    tab: Tab, gateway: GatewayProcess, admin: AdminClient
) -> None:
    page = signed_in(tab, gateway, user_with_key(admin, "second-admin", role="admin"), "keys")
    (issued,) = admin.call("keys.list", user="second-admin")["data"]
    admin.call("keys.revoke", id=issued["id"])
    page.locator(".sidebar a[data-route=users]").click()
    expect(page.locator("#key")).to_be_visible()  # the next call answered 401: sign in again
    assert page.request.get(gateway.url + "/ui/api/session").status == 401


def test_an_oidc_refusal_code_is_explained_and_an_unknown_one_shown_as_text(
    tab: Tab, gateway: GatewayProcess
) -> None:
    page = tab.page
    page.goto(gateway.url + "/ui/#signin?error=state_mismatch")
    expect(page.locator(".signin .notice")).to_contain_text("started in another window")
    page.goto(gateway.url + "/ui/#signin?error=" + XSS)
    page.reload()
    expect(page.locator(".signin .notice")).to_have_text(f"Sign-in with OIDC failed ({XSS}).")
    assert page.locator("img:not([src$='logo.svg'])").count() == 0
    assert tab.dialogs == []


def test_the_pages_call_operations_by_name_with_their_declared_parameters(
    tab: Tab, gateway: GatewayProcess, admin_key: str
) -> None:
    page = signed_in(tab, gateway, admin_key, "overview")
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/admin/v1/" in r.url else None)
    outcome = page.evaluate(
        """async () => {
            const api = await import('/ui/api.js');
            const tried = (...args) => api.call(...args).then(
                (ok) => ({ok}), (e) => ({error: e.message}));
            return {
                whoami: await tried('whoami'),
                bogus: await tried('users.list', {role: 'admin'}),
                unknown: await tried('users.purge'),
                dotted: await tried('users.show', {name: '../keys'}),
            };
        }"""
    )
    assert outcome["whoami"]["ok"]["principal"] == "admin"
    assert outcome["bogus"] == {"error": "Not a parameter of this operation: role."}
    assert outcome["unknown"] == {"error": "The gateway has no operation users.purge."}
    # The gateway resolves escapes and dot segments in a path: this would reach keys.list.
    assert outcome["dotted"] == {"error": "Not a valid name: ../keys"}
    assert sent == [f"{gateway.url}/admin/v1/whoami"]  # the refused calls sent nothing
