"""Signing in to the console with OpenID Connect, in a real browser, against a small local
identity provider (``tests.support.idp``): the authorization code flow with PKCE, the
provider's sign-in page clicked through as a person would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import console_config
from tests.browser.helpers import XSS
from tests.support.browser import Tab
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess
from tests.support.idp import LocalIdp


@pytest.fixture(scope="module")
def idp() -> Iterator[LocalIdp]:
    with LocalIdp(user="oidc-admin", roles=["admin"], interactive=True) as provider:
        yield provider


@pytest.fixture(autouse=True)
def _provider_defaults(idp: LocalIdp) -> None:
    idp.user, idp.roles, idp.deny = "oidc-admin", ["admin"], False


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, idp: LocalIdp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    state = tmp_path_factory.mktemp("state")
    config = console_config(
        upstream,
        state,
        auth={"jwt": {"issuer": idp.issuer, "audience": idp.client_id}},
        console={"oidc": {"client_id": idp.client_id}},
    )
    process = GatewayProcess(config, state)
    try:
        yield process
    finally:
        process.stop()


def through_the_provider(tab: Tab, gateway: GatewayProcess) -> None:
    """From the console's sign-in page to the provider's and its Sign in button."""
    page = tab.page
    page.goto(gateway.url + "/ui/")
    page.locator("#oidc-signin").click()
    page.locator("#approve").click()


def test_sign_in_with_oidc_then_use_the_admin_pages_and_log_out(
    tab: Tab, gateway: GatewayProcess, idp: LocalIdp
) -> None:
    page = tab.page
    through_the_provider(tab, gateway)
    expect(page.locator("#principal")).to_have_text("oidc-admin")
    expect(page.locator(".who .role")).to_have_text("admin · OIDC")
    authorization = idp.authorizations[-1]
    assert authorization["code_challenge_method"] == "S256"
    assert authorization["state"]
    assert authorization["nonce"]

    page.locator(".sidebar a[data-route=users]").click()
    page.get_by_role("button", name="New user").click()
    page.locator("#user-form input[name=name]").fill("from-oidc")
    page.locator("#user-form button[type=submit]").click()
    expect(page.locator("#messages")).to_have_text("Created user from-oidc.")
    page.locator(".sidebar a[data-route=audit]").click()
    row = page.locator("main tbody tr", has_text="from-oidc")
    expect(row).to_contain_text("oidc-admin")  # the actor is the provider's user

    page.locator("#signout").click()
    expect(page.locator("#key")).to_be_visible()
    assert page.request.get(gateway.url + "/ui/api/session").status == 401
    assert tab.dialogs == []


def test_a_provider_user_named_like_markup_is_shown_as_text(
    tab: Tab, gateway: GatewayProcess, idp: LocalIdp
) -> None:
    idp.user = XSS
    through_the_provider(tab, gateway)
    expect(tab.page.locator("#principal")).to_have_text(XSS)
    assert tab.page.locator("img:not([src$='logo.svg'])").count() == 0
    assert tab.dialogs == []


def test_a_refusal_at_the_provider_is_explained(
    tab: Tab, gateway: GatewayProcess, idp: LocalIdp
) -> None:
    idp.deny = True
    through_the_provider(tab, gateway)
    expect(tab.page.locator(".signin .notice")).to_have_text(
        "The identity provider did not sign you in."
    )
    expect(tab.page.locator(".sidebar")).to_have_count(0)


def test_a_provider_user_without_the_permission_is_refused(
    tab: Tab, gateway: GatewayProcess, idp: LocalIdp
) -> None:
    idp.user, idp.roles = "oidc-user", ["user"]
    through_the_provider(tab, gateway)
    expect(tab.page.locator(".signin .notice")).to_contain_text("may not use the console")
    expect(tab.page.locator(".sidebar")).to_have_count(0)
    assert tab.page.request.get(gateway.url + "/ui/api/session").status == 401
