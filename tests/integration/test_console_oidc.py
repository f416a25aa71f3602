"""Console sign-in through OIDC on a running gateway, against a local provider
(``tests/support/idp.py``): the whole flow, and each check that must refuse."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.console import Answer, ConsoleClient
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config
from tests.support.idp import LocalIdp

_ADDRESSES = (f"10.8.{n // 250}.{n % 250 + 1}" for n in itertools.count())


@pytest.fixture(scope="module")
def idp() -> Iterator[LocalIdp]:
    with LocalIdp(user="carol", roles=["admin"], groups=["ml"], client_secret="s3cret") as found:
        yield found


@pytest.fixture(autouse=True)
def _fresh_idp(idp: LocalIdp) -> None:
    idp.user, idp.roles, idp.deny, idp.nonce_override = "carol", ["admin"], False, None


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, idp: LocalIdp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(upstream.url, Keys())
    config["auth"]["jwt"] = {"issuer": idp.issuer, "audience": "bastion", "leeway": 5}
    config["network"] = {"trusted_proxies": ["127.0.0.1/32"]}
    config["console"] = {
        "oidc": {"client_id": idp.client_id, "client_secret": {"env": "CONSOLE_SECRET"}}
    }
    state = tmp_path_factory.mktemp("console-oidc")
    config["server"]["state_dir"] = str(state)
    env = {"TEST_UPSTREAM_KEY": UPSTREAM_KEY, "CONSOLE_SECRET": "s3cret"}
    process = GatewayProcess(config, state, env=env)
    try:
        yield process
    finally:
        process.stop()


def browser(gateway: GatewayProcess) -> ConsoleClient:
    return ConsoleClient(gateway.url, always={"X-Forwarded-For": next(_ADDRESSES)})


def start(client: ConsoleClient) -> str:
    """``/ui/oidc/start``: the provider's authorization URL (the state cookie kept)."""
    answer = client.request("GET", "/ui/oidc/start")
    assert answer.status == 302, answer.body
    [binding] = answer.cookies()
    assert binding.startswith("bastion_oidc=") and "SameSite=Lax" in binding
    assert "HttpOnly" in binding and "Path=/ui/oidc" in binding
    location = answer.header("location")
    assert location is not None
    return location


def at_provider(client: ConsoleClient, authorize_url: str) -> str:
    """The provider's answer: where it sends the browser back (the callback URL)."""
    answer = client.request("GET", authorize_url)
    assert answer.status == 302, answer.body
    location = answer.header("location")
    assert location is not None
    return location


def back(client: ConsoleClient, callback_url: str) -> Answer:
    answer = client.request("GET", callback_url)
    assert answer.status == 302
    return answer


def refused_with(answer: Answer) -> str:
    location = answer.header("location") or ""
    assert location.startswith("/ui/#signin?error="), location
    assert not any(
        c.startswith("bastion_session=") and "Max-Age=0" not in c for c in answer.cookies()
    )
    return location.rsplit("=", 1)[1]


def replace_query(url: str, **values: str) -> str:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    query.update(values)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_oidc_is_offered(gateway: GatewayProcess) -> None:
    assert browser(gateway).request("GET", "/ui/api/oidc/config").json() == {"enabled": True}


def test_the_whole_flow_signs_in(gateway: GatewayProcess, idp: LocalIdp) -> None:
    client = browser(gateway)
    authorize = start(client)
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(idp.issuer + "/authorize?")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["client_id"] == [idp.client_id] and query["scope"] == ["openid profile email"]
    assert query["redirect_uri"] == [gateway.url + "/ui/oidc/callback"]
    assert query["state"][0] == client.jar["bastion_oidc"] and query["nonce"][0]
    answer = back(client, at_provider(client, authorize))
    assert answer.header("location") == "/ui/"
    session_cookie = next(c for c in answer.cookies() if c.startswith("bastion_session="))
    assert "SameSite=Strict" in session_cookie and "HttpOnly" in session_cookie
    assert "bastion_oidc" not in client.jar  # the binding is cleared
    token_request = idp.token_requests[-1]
    assert len(token_request["code_verifier"]) >= 43  # the verifier went to the provider only
    assert token_request["code_verifier"] not in authorize
    session = client.request("GET", "/ui/api/session")
    assert session.status == 200
    body = session.json()
    assert (body["principal"], body["role"], body["method"]) == ("carol", "admin", "oidc")
    who = client.admin("GET", "whoami", body["csrf"])
    assert who.status == 200 and who.json()["principal"] == "carol"
    # the used state and code cannot be replayed
    replay = client.request("GET", urlsplit(answer.header("location") or "").path)
    assert replay.status == 200
    client.jar["bastion_oidc"] = query["state"][0]
    again = back(client, at_provider(browser(gateway), authorize))
    assert refused_with(again) == "state_unknown"


def test_a_viewer_role_from_the_provider(gateway: GatewayProcess, idp: LocalIdp) -> None:
    idp.roles = ["console-viewer"]
    client = browser(gateway)
    answer = back(client, at_provider(client, start(client)))
    assert answer.header("location") == "/ui/"
    body = client.request("GET", "/ui/api/session").json()
    assert body["role"] == "console-viewer" and "admin" not in body["permissions"]
    assert client.admin("GET", "usage", body["csrf"]).status == 200
    assert client.admin("GET", "users", body["csrf"]).status == 403


def test_a_plain_user_is_refused(gateway: GatewayProcess, idp: LocalIdp) -> None:
    idp.roles = ["user"]
    client = browser(gateway)
    assert refused_with(back(client, at_provider(client, start(client)))) == "forbidden"
    assert client.request("GET", "/ui/api/session").status == 401


def test_a_wrong_pkce_verifier_is_refused(gateway: GatewayProcess, idp: LocalIdp) -> None:
    client = browser(gateway)
    authorize = start(client)
    # someone swaps the challenge on the way (or redeems a stolen code): the gateway's
    # verifier no longer fits, and the provider refuses the code
    forged = replace_query(authorize, code_challenge="A" * 43)
    answer = back(client, at_provider(client, forged))
    assert refused_with(answer) == "token_refused"
    assert idp.refusals[-1] == "code_verifier does not match the challenge"
    assert client.request("GET", "/ui/api/session").status == 401


def test_a_state_that_is_not_the_browsers_is_refused(gateway: GatewayProcess) -> None:
    victim, attacker = browser(gateway), browser(gateway)
    callback = at_provider(attacker, start(attacker))  # the attacker's own code and state
    assert refused_with(back(victim, callback)) == "state_mismatch"  # no binding cookie
    start(victim)  # the victim has a binding of its own, for another state
    assert refused_with(back(victim, callback)) == "state_mismatch"
    changed = replace_query(at_provider(victim, start(victim)), state="x" * 43)
    assert refused_with(back(victim, changed)) == "state_mismatch"
    assert victim.request("GET", "/ui/api/session").status == 401


def test_a_nonce_that_is_not_ours_is_refused(gateway: GatewayProcess, idp: LocalIdp) -> None:
    idp.nonce_override = "someone-elses-nonce"
    client = browser(gateway)
    assert refused_with(back(client, at_provider(client, start(client)))) == "nonce_mismatch"


def test_the_provider_saying_no(gateway: GatewayProcess, idp: LocalIdp) -> None:
    idp.deny = True
    client = browser(gateway)
    assert refused_with(back(client, at_provider(client, start(client)))) == "provider_refused"


def test_a_token_for_another_client_is_refused(gateway: GatewayProcess, idp: LocalIdp) -> None:
    """An id token is checked as a bearer JWT is: here, its audience (another client)."""
    client = browser(gateway)
    authorize = start(client)
    idp.client_id = "another-client"
    try:
        callback = at_provider(client, replace_query(authorize, client_id="another-client"))
    finally:
        idp.client_id = "bastion-console"
    assert refused_with(back(client, callback)) == "failed"
