"""The web console's server side on a running gateway: pages and their headers, sign-in with
a key, sessions on the admin API (cookie + CSRF), sign-out, revocation, the console viewer."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from bastion.auth.apikeys import generate_key, hash_key
from bastion.pipeline.endpoints import CONSOLE_HEADERS
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.console import Answer, ConsoleClient
from tests.support.databases import reset_postgres
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.support.tls import client_context, server_files

ROOT = generate_key()
ALICE = generate_key()
WATCHER = generate_key()
NARROW_ROOT = generate_key()
_ADDRESSES = (f"10.9.{n // 250}.{n % 250 + 1}" for n in itertools.count())


def address() -> dict[str, str]:
    """A caller address of the test's own (the gateway trusts X-Forwarded-For from
    127.0.0.1), so that the brute-force guard's counts of one test touch no other."""
    return {"X-Forwarded-For": next(_ADDRESSES)}


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(upstream.url, Keys())
    config["auth"] = {
        "api_keys": [
            {"name": "root", "hash": hash_key(ROOT), "role": "admin"},
            {"name": "alice", "hash": hash_key(ALICE), "role": "user"},
            {"name": "watcher", "hash": hash_key(WATCHER), "role": "console-viewer"},
            {"name": "narrow", "hash": hash_key(NARROW_ROOT), "role": "admin", "routes": ["chat"]},
        ],
        "brute_force": {"max_failures": 3, "window": 60, "block": 60},
    }
    config["network"] = {"trusted_proxies": ["127.0.0.1/32"]}
    config["store"] = {"poll_interval": 0.2}
    config["console"] = {"sign_in_attempts": 4}
    config["limits"] = {"per_user": {"tokens_per_day": 100000, "requests_per_minute": 600}}
    with running_gateway(config, tmp_path_factory.mktemp("console"), UPSTREAM_KEY) as process:
        yield process


def client(gateway: GatewayProcess) -> ConsoleClient:
    """A browser of its own, from an address of its own."""
    return ConsoleClient(gateway.url, always=address())


def signed_in(gateway: GatewayProcess, key: str = ROOT) -> tuple[ConsoleClient, str]:
    browser = client(gateway)
    answer = browser.sign_in(key)
    assert answer.status == 200, answer.body
    return browser, answer.json()["csrf"]


def assert_console_headers(answer: Answer) -> None:
    for name, value in CONSOLE_HEADERS:
        assert answer.header(name.decode()) == value.decode(), name
    assert "frame-ancestors 'none'" in (answer.header("content-security-policy") or "")


# -- pages ----------------------------------------------------------------------------------


def test_every_ui_answer_carries_the_security_headers(gateway: GatewayProcess) -> None:
    browser = client(gateway)
    page = browser.request("GET", "/ui/")
    assert page.status == 200 and page.header("content-type") == "text/html; charset=utf-8"
    assert b"<html" in page.body and page.header("cache-control") == "no-store"
    assert browser.request("GET", "/ui/index.html").body == page.body
    bare = browser.request("GET", "/ui")
    assert (bare.status, bare.header("location")) == (302, "/ui/")
    assert_console_headers(bare)
    answers = [
        page,
        browser.request("GET", "/ui/nothing.js"),  # 404
        browser.request("POST", "/ui/"),  # 405
        browser.request("GET", "/ui/api/session"),  # 401
        browser.request("GET", "/ui/api/oidc/config"),
        browser.request("GET", "/ui/oidc/start"),  # 404: no OIDC here
        browser.sign_in(generate_key()),  # 401
    ]
    assert [a.status for a in answers] == [200, 404, 405, 401, 200, 404, 401]
    for answer in answers:
        assert_console_headers(answer)
    assert answers[4].json() == {"enabled": False}
    assert answers[2].header("allow") == "GET"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../ui/../bastion.yaml",
        "/ui/%2e%2e/%2e%2e/etc/passwd",
        "/ui/..%2f..%2fsettings.py",
        "/ui/%252e%252e/handler.py",
        "/ui/static/index.html",
        "/ui/handler.py",
        "/ui/..\\..\\etc\\passwd",
        "/ui/%5c..%5chandler.py",
        "/ui/index.html%00.js",
        "/ui/./index.html/",
    ],
)
def test_no_path_reaches_beyond_the_pages(gateway: GatewayProcess, path: str) -> None:
    answer = client(gateway).request("GET", path)
    if path == "/ui/./index.html/":  # the same file, canonically
        assert answer.status == 200
        return
    assert answer.status == 404, (path, answer.body[:200])
    assert b"import" not in answer.body and b"root:" not in answer.body


# -- sign-in --------------------------------------------------------------------------------


def test_an_administrator_signs_in_with_a_key(gateway: GatewayProcess) -> None:
    browser = client(gateway)
    answer = browser.request("POST", "/ui/api/session", {"key": ROOT}, address())
    assert answer.status == 200
    body = answer.json()
    assert (body["principal"], body["role"], body["method"]) == ("root", "admin", "key")
    assert {"admin", "console", "chat"} <= set(body["permissions"])
    assert len(body["csrf"]) >= 40 and body["expires_at"] > time.time() + 8 * 3600 - 60
    [session_cookie] = answer.cookies()
    name_value, *flags = [p.strip() for p in session_cookie.split(";")]
    assert name_value.startswith("bastion_session=") and len(name_value) > 50
    assert set(flags) == {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"}  # no TLS
    assert ROOT not in answer.body.decode() and ROOT not in gateway.logs
    assert answer.header("cache-control") == "no-store"
    again = browser.request("GET", "/ui/api/session")
    assert again.status == 200 and again.json()["csrf"] == body["csrf"]


def test_who_may_not_sign_in(gateway: GatewayProcess) -> None:
    browser = client(gateway)
    user = browser.request("POST", "/ui/api/session", {"key": ALICE}, address())
    assert user.status == 403 and user.json()["error"]["type"] == "permission_error"
    narrowed = browser.request("POST", "/ui/api/session", {"key": NARROW_ROOT}, address())
    assert narrowed.status == 403  # an admin's key restricted to chat is not a console key
    for key in (generate_key(), "not a key", 42, None):
        bad = browser.request("POST", "/ui/api/session", {"key": key}, address())
        assert bad.status == 401 and bad.json()["error"]["type"] == "authentication_error"
    assert browser.jar == {}
    form = browser.request(
        "POST", "/ui/api/session", headers={"Content-Type": "text/plain", **address()},
        raw=b'{"key": "%s"}' % ROOT.encode(),
    )  # fmt: skip
    assert form.status == 415  # a cross-site form cannot send JSON without asking first


def test_bad_keys_all_get_the_same_answer(gateway: GatewayProcess) -> None:
    answers = [
        client(gateway).request("POST", "/ui/api/session", {"key": key}, address())
        for key in (generate_key(), "bst_short", "x" * 300)
    ]
    assert {a.status for a in answers} == {401}
    assert len({a.body for a in answers}) == 1


def test_a_cross_site_sign_in_is_refused(gateway: GatewayProcess) -> None:
    browser = client(gateway)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = browser.request("POST", "/ui/api/session", {"key": ROOT}, {**headers, **address()})
        assert answer.status == 403 and answer.json()["error"]["code"] == "cross_site"
    own = {"Origin": gateway.url, "Sec-Fetch-Site": "same-origin", **address()}
    assert browser.request("POST", "/ui/api/session", {"key": ROOT}, own).status == 200


def test_failed_sign_ins_meet_the_brute_force_guard(gateway: GatewayProcess) -> None:
    where = address()
    for _ in range(3):
        assert (
            client(gateway)
            .request("POST", "/ui/api/session", {"key": generate_key()}, where)
            .status
            == 401
        )
    blocked = client(gateway).request("POST", "/ui/api/session", {"key": ROOT}, where)
    assert blocked.status == 429 and blocked.header("retry-after") is not None
    # the guard is the gateway's own: the same address is refused on the API as well
    assert (
        client(gateway)
        .request("GET", "/v1/models", headers={**where, "Authorization": f"Bearer {ROOT}"})
        .status
        == 429
    )


def test_made_up_session_cookies_meet_the_guard(gateway: GatewayProcess) -> None:
    guesser = client(gateway)
    statuses = []
    for _ in range(4):
        guesser.jar = {"bastion_session": generate_key()}
        statuses.append(guesser.request("GET", "/ui/api/session").status)
    assert statuses == [401, 401, 401, 429]


def test_sign_ins_are_rate_limited_per_address(gateway: GatewayProcess) -> None:
    where = address()
    statuses = [
        client(gateway).request("POST", "/ui/api/session", {"key": ROOT}, where).status
        for _ in range(5)
    ]
    assert statuses == [200, 200, 200, 200, 429]
    assert (
        client(gateway).request("POST", "/ui/api/session", {"key": ROOT}, address()).status == 200
    )


# -- the admin API with a session -----------------------------------------------------------


def test_the_admin_api_takes_the_session_with_its_csrf_token(gateway: GatewayProcess) -> None:
    browser, csrf = signed_in(gateway)
    listed = browser.admin("GET", "users", csrf)
    assert listed.status == 200 and listed.header("cache-control") == "no-store"
    assert browser.admin("GET", "whoami", csrf).json()["principal"] == "root"
    missing = browser.admin("GET", "users", None)
    assert missing.status == 403 and missing.json()["error"]["code"] == "csrf_failed"
    assert browser.admin("GET", "users", csrf[:-2] + "xx").status == 403
    assert browser.admin("GET", "users", "").status == 403
    created = browser.admin("POST", "users", csrf, {"name": "from-console"}, Origin=gateway.url)
    assert created.status == 201
    cross = browser.admin("POST", "users", csrf, {"name": "evil"}, Origin="https://evil.example")
    assert cross.status == 403 and cross.json()["error"]["code"] == "cross_site"
    fetched = browser.admin("DELETE", "users/from-console", csrf, Sec_Fetch_Site="cross-site")
    assert fetched.status == 403
    assert client(gateway).admin("GET", "users", csrf).status == 401  # the token without the cookie
    # the session opens the admin API only: on the model API a cookie is no credential
    models = browser.request("GET", "/v1/models", headers={"X-CSRF-Token": csrf})
    assert models.status == 401


def test_an_authorization_header_wins_over_the_cookie(gateway: GatewayProcess) -> None:
    browser, csrf = signed_in(gateway)
    as_alice = browser.admin("GET", "users", csrf, Authorization=f"Bearer {ALICE}")
    assert as_alice.status == 403  # judged by the header alone: alice is no administrator
    stolen = client(gateway)
    stolen.jar = {"bastion_session": "A" * 43}
    assert stolen.admin("GET", "users", csrf).status == 401


def test_the_console_viewer_reads_only_its_operations(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    browser = client(gateway)
    answer = browser.sign_in(WATCHER)
    assert answer.status == 200
    body = answer.json()
    assert body["role"] == "console-viewer" and "console" in body["permissions"]
    assert "admin" not in body["permissions"]
    csrf = body["csrf"]
    for path in ("whoami", "usage?by=user,model&period=day", "upstreams", "limits"):
        assert browser.admin("GET", path, csrf).status == 200, path
    refused_ops = (("GET", "users"), ("GET", "keys"), ("GET", "audit"), ("GET", "roles"),
                   ("POST", "users"), ("POST", "reload"), ("GET", "openapi.json"))  # fmt: skip
    for method, path in refused_ops:
        refused = browser.admin(method, path, csrf, {"name": "x"} if method == "POST" else None)
        assert refused.status == 403, path
    # the same with the viewer's key as a bearer token
    assert (
        client(gateway)
        .request("GET", "/admin/v1/limits", headers={"Authorization": f"Bearer {WATCHER}"})
        .status
        == 200
    )
    assert (
        client(gateway)
        .request("GET", "/admin/v1/users", headers={"Authorization": f"Bearer {WATCHER}"})
        .status
        == 403
    )
    [model] = browser.admin("GET", "upstreams", csrf).json()["data"]
    assert model["model"] == "test-model" and model["total"] == 1
    assert model["upstreams"][0]["name"] == upstream.url.split("://")[1]
    limits = browser.admin("GET", "limits", csrf).json()
    assert limits["buckets"][0]["scope"] == "per_user"
    assert limits["buckets"][0]["limits"]["tokens_per_day"] == 100000


# -- sign-out and revocation ----------------------------------------------------------------


def test_sign_out_needs_the_token_and_ends_the_session(gateway: GatewayProcess) -> None:
    browser, csrf = signed_in(gateway)
    cookie = dict(browser.jar)
    assert browser.request("DELETE", "/ui/api/session").status == 403  # no CSRF token
    assert browser.request("GET", "/ui/api/session").status == 200
    out = browser.request("DELETE", "/ui/api/session", headers={"X-CSRF-Token": csrf})
    assert out.status == 204
    [cleared] = out.cookies()
    assert cleared.startswith("bastion_session=;") and "Max-Age=0" in cleared
    assert_console_headers(out)
    replayed = client(gateway)
    replayed.jar = cookie  # the old cookie, kept by someone
    assert replayed.request("GET", "/ui/api/session").status == 401
    assert replayed.admin("GET", "users", csrf).status == 401


def _wait_refused(browser: ConsoleClient, csrf: str) -> None:
    """The change reaches this gateway at once (its own admin call) or within a poll."""
    deadline = time.monotonic() + 5
    while browser.request("GET", "/ui/api/session").status != 401:
        assert time.monotonic() < deadline, "the session outlived its key"
        time.sleep(0.05)
    assert browser.admin("GET", "whoami", csrf).status == 401


def test_a_session_dies_with_its_key_and_with_its_user(gateway: GatewayProcess) -> None:
    admin, admin_csrf = signed_in(gateway)
    for user in ("keyed", "disabled", "deleted"):
        assert (
            admin.admin("POST", "users", admin_csrf, {"name": user, "role": "admin"}).status == 201
        )
    sessions = {}
    for user in ("keyed", "disabled", "deleted"):
        issued = admin.admin("POST", "keys", admin_csrf, {"user": user}).json()
        sessions[user] = (issued["key"]["id"], *signed_in(gateway, issued["secret"]))
    key_id, browser, csrf = sessions["keyed"]
    assert browser.admin("GET", "whoami", csrf).json()["principal"] == "keyed"
    assert admin.admin("POST", f"keys/{key_id}/revoke", admin_csrf).status == 200
    _wait_refused(browser, csrf)
    _, browser, csrf = sessions["disabled"]
    assert admin.admin("PATCH", "users/disabled", admin_csrf, {"disabled": True}).status == 200
    _wait_refused(browser, csrf)
    _, browser, csrf = sessions["deleted"]
    assert admin.admin("DELETE", "users/deleted", admin_csrf).status == 200
    _wait_refused(browser, csrf)


def test_sign_ins_and_sign_outs_are_audited(gateway: GatewayProcess) -> None:
    browser, csrf = signed_in(gateway)
    assert (
        browser.request("DELETE", "/ui/api/session", headers={"X-CSRF-Token": csrf}).status == 204
    )
    admin, admin_csrf = signed_in(gateway)
    deadline = time.monotonic() + 5
    while True:
        events = admin.admin("GET", "audit?action=console.&limit=50", admin_csrf).json()["data"]
        actions = {e["action"] for e in events}
        if {"console.sign_in", "console.sign_out"} <= actions or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {"console.sign_in", "console.sign_out"} <= actions
    assert all(e["actor"] and e["detail"] == {"method": "key"} for e in events)


def test_a_console_load_before_sign_in_is_not_an_audited_refusal(gateway: GatewayProcess) -> None:
    """Each page load asks for its session first; without any cookie that is 401
    ``not_signed_in`` and no audit event, where a made-up cookie is a refused credential."""
    since = time.time()
    anonymous = client(gateway)
    answer = anonymous.request("GET", "/ui/api/session")
    assert answer.status == 401 and answer.json()["error"]["code"] == "not_signed_in"
    guessed = client(gateway)
    guessed.jar = {"bastion_session": "made-up"}
    assert guessed.request("GET", "/ui/api/session").status == 401
    admin, admin_csrf = signed_in(gateway)
    deadline = time.monotonic() + 5
    while True:
        query = f"audit?action=request.refused&since={since}&limit=500"
        events = admin.admin("GET", query, admin_csrf)
        refused = [e for e in events.json()["data"] if e["target"] == "/ui/api/session"]
        if refused or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [e["detail"]["reason"] for e in refused] == ["invalid_api_key"]  # the guess only


def test_the_session_cookie_is_secure_under_tls(upstream: FakeUpstream, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key, _ = server_files(ca, tmp_path)
    config = base_config(upstream.url, Keys())
    config["auth"]["api_keys"].append({"name": "boss", "hash": hash_key(ROOT), "role": "admin"})
    config["server"]["tls"] = {"certificate": str(cert), "key": str(key)}
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as process:
        assert process.url.startswith("https://")
        browser = ConsoleClient(process.url, context=client_context(ca))
        answer = browser.sign_in(ROOT)
        assert answer.status == 200
        [session_cookie] = answer.cookies()
        assert "; Secure" in session_cookie and "SameSite=Strict" in session_cookie
        assert_console_headers(browser.request("GET", "/ui/"))
        out = browser.request(
            "DELETE", "/ui/api/session", headers={"X-CSRF-Token": answer.json()["csrf"]}
        )
        assert out.status == 204 and "; Secure" in out.cookies()[0]


def test_the_console_is_off_without_the_store(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream.url, Keys())
    config["store"] = {"enabled": False}
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as process:
        browser = ConsoleClient(process.url)
        assert browser.request("GET", "/ui/").status == 404
        assert browser.sign_in(generate_key()).status == 404
    config["console"] = {"enabled": True}
    with (
        pytest.raises(RuntimeError, match=r"console\.enabled needs the store"),
        running_gateway(config, tmp_path, UPSTREAM_KEY),
    ):
        pass


def test_replicas_share_sessions_through_postgresql(
    upstream: FakeUpstream, tmp_path: Path, postgres_url: str
) -> None:
    """A session opened through one replica works through another, and a sign-out through
    one ends it on both (the sessions are in the store, not in a replica's memory)."""
    reset_postgres(postgres_url)
    config = base_config(upstream.url, Keys())
    config["auth"]["api_keys"].append({"name": "boss", "hash": hash_key(ROOT), "role": "admin"})
    config["store"] = {"url": postgres_url, "poll_interval": 0.2}
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    with (
        running_gateway(dict(config, server={"host": "127.0.0.1"}), first_dir, UPSTREAM_KEY) as a,
        running_gateway(dict(config, server={"host": "127.0.0.1"}), second_dir, UPSTREAM_KEY) as b,
    ):
        on_a = ConsoleClient(a.url)
        csrf = on_a.sign_in(ROOT).json()["csrf"]
        on_b = ConsoleClient(b.url, jar=dict(on_a.jar))
        assert on_b.request("GET", "/ui/api/session").json()["principal"] == "boss"
        assert on_b.admin("GET", "whoami", csrf).json()["principal"] == "boss"
        assert (
            on_a.request("DELETE", "/ui/api/session", headers={"X-CSRF-Token": csrf}).status == 204
        )
        assert on_b.request("GET", "/ui/api/session").status == 401
        assert on_b.admin("GET", "whoami", csrf).status == 401
