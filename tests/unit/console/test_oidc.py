"""OIDC sign-in against a scripted provider: what the gateway sends, and what it refuses."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bastion.auth.tokens import JwtAuthenticator
from bastion.console.oidc import OidcSignIn, id_token_settings
from bastion.errors import AuthenticationError, ServiceUnavailableError
from bastion.settings import ConsoleOidcSettings, JwtSettings, StoreSettings
from bastion.store.calls import StoreCalls
from bastion.store.sessions import SessionLedger
from bastion.store.store import Store
from tests.unit.test_jwt import rsa_signer

ISSUER = "https://idp.test"
SIGNER = rsa_signer("oidc-1")
CALLBACK = "https://gw.test/ui/oidc/callback"


class Provider:
    """Answers the gateway's requests as a provider would; each test bends one answer."""

    def __init__(self) -> None:
        self.discovery: dict[str, Any] = {
            "issuer": ISSUER,
            "authorization_endpoint": ISSUER + "/auth?tenant=1",
            "token_endpoint": ISSUER + "/token",
        }
        self.token_status = 200
        self.claims: dict[str, Any] = {}
        self.no_id_token = False
        self.sent: list[tuple[bytes, str, bytes, dict[bytes, bytes]]] = []
        self.nonce = ""

    async def __call__(
        self, method: bytes, url: str, body: bytes, headers: tuple[tuple[bytes, bytes], ...]
    ) -> tuple[int, bytes]:
        self.sent.append((method, url, body, dict(headers)))
        if url.endswith("/.well-known/openid-configuration"):
            return 200, json.dumps(self.discovery).encode()
        if url == ISSUER + "/token":
            claims = {"iss": ISSUER, "aud": "console", "sub": "dana", "nonce": self.nonce,
                      "role": "admin", **self.claims}  # fmt: skip
            answer = {} if self.no_id_token else {"id_token": SIGNER.token(**claims).decode()}
            return self.token_status, json.dumps(answer).encode()
        return 404, b""

    async def keys(self, url: str) -> bytes:
        return json.dumps({"keys": [SIGNER.jwk()]}).encode()


@pytest.fixture
async def flow(tmp_path: Path) -> AsyncIterator[tuple[OidcSignIn, Provider]]:
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    calls = StoreCalls(StoreSettings())
    provider = Provider()
    settings = ConsoleOidcSettings(client_id="console", issuer=ISSUER)
    verifier = JwtAuthenticator(
        id_token_settings(settings, None).model_copy(update={"jwks_url": ISSUER + "/jwks"}),
        fetch=provider.keys,
    )
    oidc = OidcSignIn(settings, verifier, SessionLedger(store), calls, provider, "s3cret")
    yield oidc, provider
    calls.close()
    store.close()


async def _started(oidc: OidcSignIn, provider: Provider) -> tuple[str, dict[str, str]]:
    location, state = await oidc.start(CALLBACK)
    assert location.startswith(ISSUER + "/auth?tenant=1&")
    query = {k: v[-1] for k, v in parse_qs(urlsplit(location).query).items()}
    provider.nonce = query["nonce"]
    return state, query


async def test_the_flow_sends_pkce_and_redeems_with_the_secret(flow: Any) -> None:
    oidc, provider = flow
    state, query = await _started(oidc, provider)
    assert query["state"] == state and query["code_challenge_method"] == "S256"
    identity = await oidc.finish(state, "the-code", state)
    assert (identity.principal, identity.role) == ("dana", "admin")
    method, url, body, headers = provider.sent[-1]
    form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
    assert (method, url, form["code"], form["redirect_uri"]) == (
        b"POST", ISSUER + "/token", "the-code", CALLBACK,
    )  # fmt: skip
    digest = hashlib.sha256(form["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == query["code_challenge"]
    assert headers[b"authorization"] == b"Basic " + base64.b64encode(b"console:s3cret")
    assert headers[b"content-type"] == b"application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("bend", "code"),
    [
        ({"token_status": 400}, "token_refused"),
        ({"no_id_token": True}, "no_id_token"),
        ({"claims": {"aud": ["console", "other"]}}, "wrong_audience"),
        ({"claims": {"nonce": "not-it"}}, "nonce_mismatch"),
        ({"claims": {"aud": "other"}}, "invalid_api_key"),  # refused as a bearer JWT is
        ({"claims": {"iss": ISSUER + ".evil"}}, "invalid_api_key"),
    ],
)
async def test_refusals(flow: Any, bend: dict[str, Any], code: str) -> None:
    oidc, provider = flow
    state, _ = await _started(oidc, provider)
    for name, value in bend.items():
        setattr(provider, name, value)
    with pytest.raises(AuthenticationError) as refused:
        await oidc.finish(state, "the-code", state)
    assert refused.value.code == code


async def test_a_state_is_used_once_and_only_by_its_browser(flow: Any) -> None:
    oidc, provider = flow
    state, _ = await _started(oidc, provider)
    for bound in (None, "other", state + "x"):
        with pytest.raises(AuthenticationError, match="refused") as refused:
            await oidc.finish(state, "c", bound)
        assert refused.value.code == "state_mismatch"
    await oidc.finish(state, "c", state)
    with pytest.raises(AuthenticationError) as again:
        await oidc.finish(state, "c", state)
    assert again.value.code == "state_unknown"


async def test_a_provider_that_is_not_the_issuer_is_unusable(flow: Any) -> None:
    oidc, provider = flow
    provider.discovery["issuer"] = "https://someone.else"
    with pytest.raises(ServiceUnavailableError) as refused:
        await oidc.start(CALLBACK)
    assert refused.value.code == "provider_unusable"


def test_id_tokens_are_for_the_client() -> None:
    jwt = JwtSettings(issuer=ISSUER, audience="bastion", leeway=5)
    same = id_token_settings(ConsoleOidcSettings(client_id="console"), jwt)
    assert (same.issuer, same.audience, same.leeway) == (ISSUER, "console", 5)
    other = id_token_settings(
        ConsoleOidcSettings(client_id="c", issuer="https://other.test", admin_roles=("ops",)), jwt
    )
    assert (other.issuer, other.audience, other.admin_roles) == (
        "https://other.test",
        "c",
        ("ops",),
    )
