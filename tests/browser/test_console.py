"""The web console in a real browser (headless system Chromium) against a real gateway: its
pages, driven as an operator would (forms filled, buttons clicked), each outcome checked where
it really lands: the admin API, the official ``openai`` client, the cookies."""

from __future__ import annotations

import re
import time
from pathlib import Path

import openai
import pytest
from playwright.sync_api import expect

from bastion.admin.api import ROUTER
from bastion.admin.client import AdminClient
from tests.browser.conftest import MODEL
from tests.browser.helpers import (
    chat,
    go,
    session_status,
    signed_in,
    submit,
    user_with_key,
    wait_for_requests,
)
from tests.support.browser import Tab, sign_in
from tests.support.clients import openai_client
from tests.support.gateway import GatewayProcess

PAGES = {
    "overview": "Overview",
    "usage": "Usage",
    "users": "Users",
    "teams": "Teams",
    "keys": "Keys",
    "audit": "Audit trail",
    "limits": "Limits",
}


def test_every_page_renders_within_the_content_security_policy(
    tab: Tab, gateway: GatewayProcess, admin_key: str
) -> None:
    sign_in(tab.page, gateway.url, admin_key)
    for route, title in PAGES.items():
        tab.page.locator(f".sidebar a[data-route={route}]").click()
        expect(tab.page.locator("main h1")).to_have_text(title)
        expect(tab.page.locator("main .loading")).to_have_count(0)
        expect(tab.page.locator("main .notice.bad")).to_have_count(0)
    assert tab.refused_by_policy == []
    assert tab.dialogs == []


def test_sign_in_with_a_key_then_log_out_ends_the_session_on_the_server(
    tab: Tab, gateway: GatewayProcess, admin_key: str
) -> None:
    page = tab.page
    page.goto(gateway.url + "/ui/")
    page.locator("#key").fill("bst_" + "x" * 38)
    page.locator("#signin-form button[type=submit]").click()
    expect(page.locator(".signin .notice")).to_have_text("That key was not accepted.")
    expect(page.locator(".sidebar")).to_have_count(0)

    sign_in(page, gateway.url, admin_key)
    expect(page.locator("#principal")).to_have_text("admin")
    assert page.url.endswith("#overview")
    cookies = tab.context.cookies()
    session = next(c for c in cookies if c["name"] == "bastion_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    cookie = f"bastion_session={session['value']}"
    assert session_status(gateway.url, cookie) == 200
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts never see it

    page.locator("#signout").click()
    expect(page.locator("#key")).to_be_visible()
    assert session_status(gateway.url, cookie) == 401  # revoked, not merely forgotten
    page.reload()
    expect(page.locator("#key")).to_be_visible()

    page.goto(gateway.url + "/ui/#teams")  # a link to a page: that page, once signed in
    submit(page, "#signin-form", key=admin_key)
    expect(page.locator("main h1")).to_have_text("Teams")


def test_create_a_user_and_a_key_use_it_then_revoke_it(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    page = signed_in(tab, gateway, admin_key, "users")
    page.get_by_role("button", name="New user").click()
    submit(page, "#user-form", name="ada", role="user")
    expect(page.locator("#messages")).to_have_text("Created user ada.")
    expect(page.locator("[data-user=ada]")).to_be_visible()
    assert admin.call("users.show", name="ada")["role"] == "user"

    go(page, gateway.url, "keys")
    page.get_by_role("button", name="New key").click()
    submit(page, "#key-form", user="ada", name="laptop", models=MODEL, expiry="604800")
    secret = page.locator("#secret").input_value()
    assert secret.startswith("bst_")
    (created,) = admin.call("keys.list", user="ada")["data"]
    assert created["models"] == [MODEL]
    assert 6 * 86400 < created["expires_at"] - time.time() <= 7 * 86400
    assert chat(gateway.url, secret)

    go(page, gateway.url, "overview")
    go(page, gateway.url, "keys")
    expect(page.locator("tr", has_text=created["id"])).to_be_visible()
    assert secret not in page.content()  # shown once, never again

    row = page.locator("tr", has_text=created["id"])
    row.get_by_role("button", name="Revoke").click()
    page.locator("dialog").get_by_role("button", name="Revoke").click()
    expect(page.locator("#messages")).to_have_text(f"Revoked {created['id']}.")
    assert admin.call("keys.show", id=created["id"])["state"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        chat(gateway.url, secret)
    assert tab.dialogs == []


def test_rotating_a_key_shows_the_new_secret_once_and_the_old_key_keeps_working(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    old = user_with_key(admin, "rotor")
    (before,) = admin.call("keys.list", user="rotor")["data"]
    page = signed_in(tab, gateway, admin_key, "keys")
    page.locator("tr", has_text=before["id"]).get_by_role("button", name="Rotate").click()
    page.locator("dialog select[name=overlap]").select_option("3600")
    page.locator("dialog").get_by_role("button", name="Rotate").click()
    new = page.locator("#secret").input_value()
    assert new.startswith("bst_")
    assert new != old
    assert chat(gateway.url, new)
    assert chat(gateway.url, old)  # within the hour of overlap
    keys = {k["id"]: k for k in admin.call("keys.list", user="rotor")["data"]}
    (replacement,) = [k for k in keys.values() if k["rotated_from"] == before["id"]]
    assert replacement["state"] == "active"
    assert 3500 < keys[before["id"]]["expires_at"] - time.time() <= 3600


def test_usage_from_real_requests_appears_in_the_charts_and_their_csv(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    key = user_with_key(admin, "carol")
    admin.call("teams.create", name="analytics")
    admin.call("teams.add", team="analytics", user="carol")
    for _ in range(3):
        chat(gateway.url, key)  # the fake upstream reports 8 tokens for each
    wait_for_requests(admin, "carol", 3)
    page = signed_in(tab, gateway, admin_key, "usage?days=1&period=hour&by=user")
    tokens = page.locator("[data-metric=total_tokens] rect.bar[data-series=carol]")
    assert sum(tokens.evaluate_all("els => els.map(e => Number(e.dataset.value))")) == 24
    requests = page.locator("[data-metric=requests] rect.bar[data-series=carol]")
    assert sum(requests.evaluate_all("els => els.map(e => Number(e.dataset.value))")) == 3
    expect(page.locator("[data-metric=cost] svg.chart")).to_be_visible()  # prices are set

    with page.expect_download() as download:
        page.locator("button[data-csv=total_tokens]").click()
    lines = Path(download.value.path()).read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "period_start_utc"
    assert header[-1] == "total"
    column = header.index("carol")
    assert sum(int(line.split(",")[column]) for line in lines[1:]) == 24

    controls = page.locator("#usage-controls")
    controls.locator("select[name=by]").select_option("team")
    expect(page).to_have_url(re.compile(r"by=team"))
    team = page.locator("[data-metric=total_tokens] rect.bar[data-series=analytics]")
    expect(team.first).to_be_visible()
    assert sum(team.evaluate_all("els => els.map(e => Number(e.dataset.value))")) == 24
    controls = page.locator("#usage-controls")
    controls.locator("select[name=period]").select_option("day")
    expect(page).to_have_url(re.compile(r"period=day"))
    expect(page.locator("[data-metric=requests] table")).to_contain_text("Day (UTC)")


def test_disable_a_user_and_change_roles_from_the_users_page(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    key = user_with_key(admin, "dora")
    assert chat(gateway.url, key)
    page = signed_in(tab, gateway, admin_key, "users")
    row = page.locator("tr", has=page.locator("[data-user=dora]"))
    row.get_by_role("button", name="Disable").click()
    expect(page.locator("#messages")).to_have_text("dora is disabled.")
    assert admin.call("users.show", name="dora")["disabled"] is True
    with pytest.raises(openai.AuthenticationError):
        chat(gateway.url, key)
    row.get_by_role("button", name="Enable").click()
    expect(page.locator("#messages")).to_have_text("dora is enabled.")
    assert chat(gateway.url, key)

    row.get_by_label("Role of dora").select_option("viewer")
    expect(page.locator("#messages")).to_have_text("dora now has the role viewer.")
    assert admin.call("users.show", name="dora")["role"] == "viewer"
    with pytest.raises(openai.PermissionDeniedError):
        chat(gateway.url, key)

    page.get_by_role("button", name="New user").click()
    submit(page, "#user-form", name="nightly-build", kind="service")
    expect(page.locator("#messages")).to_have_text("Created service account nightly-build.")
    page.get_by_role("link", name="Service accounts").click()
    expect(page.locator("[data-user=nightly-build]")).to_be_visible()
    expect(page.locator("[data-user=dora]")).to_have_count(0)
    assert admin.call("users.show", name="nightly-build")["kind"] == "service"


def test_teams_and_their_members(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    admin.call("users.create", name="erin")
    page = signed_in(tab, gateway, admin_key, "teams")
    page.get_by_role("button", name="New team").click()
    submit(page, "#team-form", name="vision", description="Image models")
    expect(page.locator("#messages")).to_have_text("Created team vision.")
    team = page.locator("[data-team=vision]")
    team.get_by_label("User to add to vision").select_option("erin")
    team.get_by_role("button", name="Add member").click()
    expect(page.locator("#messages")).to_have_text("Added erin to vision.")
    assert admin.call("teams.show", name="vision")["members"] == ["erin"]
    team.get_by_role("button", name="Remove erin from vision").click()
    expect(page.locator("#messages")).to_have_text("Removed erin from vision.")
    assert admin.call("teams.show", name="vision")["members"] == []
    team.get_by_role("button", name="Delete team").click()
    page.locator("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("#messages")).to_have_text("Deleted team vision.")
    assert "vision" not in {t["name"] for t in admin.call("teams.list")["data"]}


def test_a_key_limited_to_routes_and_networks_until_a_date(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    admin.call("users.create", name="frank")
    page = signed_in(tab, gateway, admin_key, "keys")
    page.get_by_role("button", name="New key").click()
    page.locator("#key-form select[name=expiry]").select_option("date")  # shows the date
    submit(
        page,
        "#key-form",
        user="frank",
        routes="chat, models",
        networks="127.0.0.0/8",
        date="2099-01-31",
    )
    secret = page.locator("#secret").input_value()
    (key,) = admin.call("keys.list", user="frank")["data"]
    assert key["routes"] == ["chat", "models"]
    assert key["networks"] == ["127.0.0.0/8"]
    assert key["expires_at"] == 4073500800  # 2099-01-31T00:00:00Z
    assert chat(gateway.url, secret)
    with pytest.raises(openai.PermissionDeniedError):  # not one of its routes
        openai_client(gateway.url, secret).embeddings.create(model=MODEL, input="x")


def test_the_overview_adds_up_what_the_usage_api_reports(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    key = user_with_key(admin, "gina")
    for _ in range(2):
        chat(gateway.url, key)
    wait_for_requests(admin, "gina", 2)
    page = tab.page
    sign_in(page, gateway.url, admin_key)
    today = time.time() // 86400 * 86400
    rows = admin.call("usage", by=["model"], period="day", since=today)["data"]
    go(page, gateway.url, "overview")
    tiles = page.locator("[data-period=Today]")
    expect(tiles.locator("[data-stat=requests] .tile-value")).to_have_text(
        f"{sum(r['requests'] for r in rows):,}"
    )
    expect(tiles.locator("[data-stat=tokens] .tile-value")).to_have_text(
        f"{sum(r['total_tokens'] for r in rows):,}"
    )
    health = page.locator("main tr", has_text=MODEL)
    expect(health).to_contain_text("1 of 1 healthy")


def test_the_limits_page_shows_the_budgets_and_who_is_nearest(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    key = user_with_key(admin, "hal")
    chat(gateway.url, key)  # 8 tokens of a daily 100,000
    wait_for_requests(admin, "hal", 1)
    page = signed_in(tab, gateway, admin_key, "limits")
    configured = page.locator("main .card", has_text="Configured limits")
    expect(configured.locator("tr", has_text="Each user")).to_contain_text("100,000")
    expect(configured.locator("tr", has_text=f"Model {MODEL}")).to_contain_text("64")
    hal = page.locator("main .card", has_text="Nearest to a budget").locator("tr", has_text="hal")
    expect(hal).to_contain_text("tokens today")
    expect(hal.locator("td").nth(2)).to_have_text("8")
    expect(hal.locator("td").nth(3)).to_have_text("100,000")


def test_the_audit_trail_filters(
    tab: Tab, gateway: GatewayProcess, admin_key: str, admin: AdminClient
) -> None:
    key = user_with_key(admin, "ivan")
    refused = AdminClient(gateway.url, key).exchange(ROUTER.by_name["users.list"].request({}))
    assert refused.status == 403
    page = signed_in(tab, gateway, admin_key, "audit")
    submit(page, "#audit-filters", outcome="denied", actor="ivan")
    expect(page).to_have_url(re.compile(r"#audit\?.*outcome=denied"))
    rows = page.locator("main tbody tr")
    expect(rows.first).to_contain_text("request.refused")
    for row in rows.all():
        expect(row).to_contain_text("ivan")
        expect(row).to_contain_text("denied")
    submit(page, "#audit-filters", outcome="ok", actor="", action="key.")
    expect(page.locator("main tbody tr", has_text="key.create").first).to_be_visible()
    assert "request.refused" not in page.locator("main tbody").inner_text()
