"""JWTs signed with real RSA and EC keys, keys served as a JWKS by a local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bastion.auth.tokens import JwtAuthenticator
from bastion.errors import AuthenticationError, ServiceUnavailableError
from bastion.settings import JwtSettings

ISSUER = "https://idp.test/realms/main"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Signer:
    kid: str
    private: Any
    algorithm: str

    def jwk(self) -> dict[str, Any]:
        cls = RSAAlgorithm if self.algorithm.startswith(("RS", "PS")) else ECAlgorithm
        data: dict[str, Any] = json.loads(cls.to_jwk(self.private.public_key()))
        data.update(kid=self.kid, use="sig")
        return data

    def token(self, headers: dict[str, Any] | None = None, **claims: Any) -> bytes:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": "bastion", "sub": "alice", "iat": now, "exp": now + 300}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"kid": self.kid, **(headers or {})}
        return jwt.encode(payload, self.private, self.algorithm, headers=headers).encode()


def rsa_signer(kid: str = "rsa-1") -> Signer:
    return Signer(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_signer(kid: str = "ec-1") -> Signer:
    return Signer(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


@dataclass
class IdentityProvider:
    """A local HTTP server publishing a discovery document and a JWKS."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    port: int = 0
    down: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        if path.endswith("/.well-known/openid-configuration"):
            body = json.dumps({"issuer": ISSUER, "jwks_uri": f"{self.url}/jwks"}).encode()
        else:
            self.fetches += 1
            body = json.dumps({"keys": self.keys}).encode()
        status = b"503 Unavailable" if self.down else b"200 OK"
        writer.write(
            b"HTTP/1.1 %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, len(body), body)
        )
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider()
    server = await asyncio.start_server(provider.handle, "127.0.0.1", 0)
    provider.port = server.sockets[0].getsockname()[1]
    yield provider
    server.close()
    await server.wait_closed()


def make(idp: IdentityProvider, **overrides: Any) -> JwtAuthenticator:
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": "bastion",
        "jwks_url": f"{idp.url}/jwks",
        "leeway": 5,
        "jwks_min_refresh_interval": 0,
    }
    settings.update(overrides)
    return JwtAuthenticator(JwtSettings(**settings))


async def refused(auth: JwtAuthenticator, token: bytes) -> None:
    with pytest.raises(AuthenticationError):
        await auth.authenticate(b"bearer", token)


@pytest.mark.parametrize("signer", [rsa_signer(), ec_signer()], ids=["RS256", "ES256"])
async def test_valid_tokens_are_accepted_and_mapped(idp: IdentityProvider, signer: Signer) -> None:
    idp.keys = [signer.jwk()]
    auth = make(idp)
    token = signer.token(groups=["ml", "ops", 7], role=["admin", "x"])
    identity = await auth.authenticate(b"bearer", token)
    assert identity is not None
    assert identity.principal == "alice"
    assert identity.teams == ("ml", "ops")
    assert identity.role == "admin"
    assert identity.method == "jwt"
    viewer = await auth.authenticate(b"bearer", signer.token(sub="bob", role="viewer"))
    assert viewer is not None and viewer.role == "viewer" and viewer.teams == ()
    plain = await auth.authenticate(b"bearer", signer.token(sub="eve", role="wizard"))
    assert plain is not None and plain.role == "user"


async def test_alg_none_is_refused(idp: IdentityProvider) -> None:
    signer = rsa_signer()
    idp.keys = [signer.jwk()]
    claims = jwt.decode(signer.token(), options={"verify_signature": False})
    header = _b64(json.dumps({"alg": "none", "kid": signer.kid}).encode())
    body = _b64(json.dumps(claims).encode())
    await refused(make(idp), f"{header}.{body}.".encode())


async def test_hmac_with_the_public_key_is_refused(idp: IdentityProvider) -> None:
    signer = rsa_signer()
    idp.keys = [signer.jwk()]
    claims = jwt.decode(signer.token(), options={"verify_signature": False})
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.kid}).encode())
    body = _b64(json.dumps(claims).encode())
    public_pem = signer.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    await refused(make(idp), f"{header}.{body}.{_b64(mac)}".encode())
    # and HS256 cannot even be configured
    with pytest.raises(ValueError, match="public-key"):
        JwtSettings(issuer=ISSUER, audience="bastion", algorithms=("HS256",))


async def test_a_key_of_the_wrong_type_is_refused(idp: IdentityProvider) -> None:
    rsa_key, ec_key = rsa_signer("k"), ec_signer("k")
    idp.keys = [ec_key.jwk()]  # the provider publishes an EC key under kid "k"
    await refused(make(idp, algorithms=("RS256", "ES256")), rsa_key.token())


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "someone-else"},
        {"aud": None},
        {"iss": "https://idp.test/realms/main.evil"},
        {"iss": "https://idp.test/realms/mai"},
        {"iss": "https://evil.test/?https://idp.test/realms/main"},
        {"iss": None},
        {"exp": None},
        {"exp": -60},  # seconds from now: resolved when the test runs, not when collected
        {"nbf": 60},
        {"sub": None},
        {"sub": 42},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
async def test_bad_claims_are_refused(idp: IdentityProvider, claims: dict[str, Any]) -> None:
    signer = rsa_signer()
    idp.keys = [signer.jwk()]
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") and v is not None else v for k, v in claims.items()}
    await refused(make(idp), signer.token(**claims))


async def test_small_clock_skew_is_tolerated(idp: IdentityProvider) -> None:
    signer = rsa_signer()
    idp.keys = [signer.jwk()]
    just_expired = signer.token(exp=int(time.time()) - 2)
    assert await make(idp, leeway=5).authenticate(b"bearer", just_expired) is not None
    await refused(make(idp, leeway=0), just_expired)


async def test_unknown_crit_header_is_refused(idp: IdentityProvider) -> None:
    signer = rsa_signer()
    idp.keys = [signer.jwk()]
    await refused(make(idp), signer.token(headers={"crit": ["exp"]}))


async def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
    idp: IdentityProvider,
) -> None:
    published, impostor = rsa_signer("k1"), rsa_signer("k1")
    idp.keys = [published.jwk()]
    await refused(make(idp), impostor.token())


async def test_unknown_kids_refresh_the_key_set_at_most_so_often(idp: IdentityProvider) -> None:
    signer = rsa_signer()
    idp.keys = [signer.jwk()]
    auth = make(idp, jwks_min_refresh_interval=60)
    assert await auth.authenticate(b"bearer", signer.token()) is not None
    assert idp.fetches == 1
    stranger = rsa_signer("unknown")
    for _ in range(5):
        await refused(auth, stranger.token())
    assert idp.fetches == 1  # no fetch storm from made-up key ids


async def test_key_rotation_is_followed(idp: IdentityProvider) -> None:
    old, new = rsa_signer("2025"), ec_signer("2026")
    idp.keys = [old.jwk()]
    auth = make(idp)
    assert await auth.authenticate(b"bearer", old.token()) is not None
    idp.keys = [new.jwk()]  # the provider rotates
    identity = await auth.authenticate(b"bearer", new.token(sub="carol"))
    assert identity is not None and identity.principal == "carol"
    assert idp.fetches == 2
    await refused(auth, old.token(sub="dave"))  # a fresh token from the retired key


async def test_keys_are_found_through_oidc_discovery(idp: IdentityProvider) -> None:
    signer = ec_signer()
    idp.keys = [signer.jwk()]
    auth = JwtAuthenticator(
        JwtSettings(issuer=ISSUER, audience="bastion", jwks_url=None),
        fetch=lambda url: _rewrite_and_get(url, idp),
    )
    assert await auth.authenticate(b"bearer", signer.token()) is not None


async def _rewrite_and_get(url: str, idp: IdentityProvider) -> bytes:
    from bastion.auth.jwks import http_get

    return await http_get(url.replace("https://idp.test", idp.url))


async def test_verified_tokens_are_cached(idp: IdentityProvider) -> None:
    signer = rsa_signer()
    idp.keys = [signer.jwk()]
    auth = make(idp)
    token = signer.token()
    for _ in range(4):
        assert await auth.authenticate(b"bearer", token) is not None
    assert auth.verifications == 1


async def test_provider_down_fails_closed(
    idp: IdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    signer = rsa_signer()
    idp.keys = [signer.jwk()]
    idp.down = True
    auth = make(idp)
    with pytest.raises(ServiceUnavailableError):  # no key ever fetched: 503, not a guess
        await auth.authenticate(b"bearer", signer.token())
    assert "cannot fetch the JWT signing keys" in caplog.text
    idp.down = False
    assert await auth.authenticate(b"bearer", signer.token()) is not None
    idp.down = True  # keys known: an unknown kid is now the caller's problem (401)
    await refused(auth, rsa_signer("other").token())
    assert await auth.authenticate(b"bearer", signer.token(sub="zed")) is not None


async def test_requests_during_the_first_fetch_wait_for_it(idp: IdentityProvider) -> None:
    signer = ec_signer()
    idp.keys = [signer.jwk()]
    auth = make(idp, jwks_min_refresh_interval=10)
    tokens = [signer.token(sub=f"user{i}") for i in range(50)]
    identities = await asyncio.gather(*(auth.authenticate(b"bearer", t) for t in tokens))
    assert all(i is not None for i in identities)
    assert idp.fetches == 1


async def test_other_credentials_are_not_ours(idp: IdentityProvider) -> None:
    auth = make(idp)
    assert await auth.authenticate(b"bearer", b"bst_abc") is None
    assert await auth.authenticate(b"bearer", b"opaque-token") is None
    assert await auth.authenticate(b"basic", b"a.b.c") is None
    await refused(auth, b"not.a.jwt")


async def test_keys_can_come_from_a_file(tmp_path: Path) -> None:
    signer = rsa_signer()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [signer.jwk()]}))
    settings = JwtSettings(issuer=ISSUER, audience="bastion", jwks_file=path)
    auth = JwtAuthenticator(settings)
    assert await auth.authenticate(b"bearer", signer.token()) is not None
    with pytest.raises(ValueError, match="not both"):
        JwtSettings(issuer=ISSUER, audience="bastion", jwks_file=path, jwks_url="https://x/j")
