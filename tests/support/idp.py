"""A small, real OpenID Connect provider for tests: discovery, JWKS, authorization, token.

It listens on ``127.0.0.1`` (port 0) in a thread of its own and plays the provider's side of
the authorization code flow with PKCE, checking what a real provider checks: the client id,
the redirect URI (sent again, identically, to the token endpoint), ``S256`` and the code
verifier against the challenge, a code used once, the client secret when one is set. Its id
tokens are signed with a fresh RSA key (``cryptography``), published in its JWKS, and carry
the ``nonce`` the authorization request gave, the user (``sub``), ``groups`` and ``role``.

Use (the gateway's issuer is the provider's URL; the console's client id is ``client_id``)::

    with LocalIdp(user="carol", roles=["admin"]) as idp:
        config["auth"]["jwt"] = {"issuer": idp.issuer, "audience": "bastion"}
        config["console"] = {"oidc": {"client_id": idp.client_id}}
        ... start the gateway, then GET /ui/oidc/start ...

- By default ``/authorize`` approves at once: it redirects the browser straight back to the
  redirect URI with ``code`` and ``state`` (what a session that is already signed in at the
  provider sees), so plain HTTP clients can follow the flow.
- With ``interactive=True`` it shows a tiny HTML page instead, with a form and a
  ``Sign in`` button (``<button id="approve">``); submitting it (a POST to ``/approve``)
  redirects back. Browser tests (Playwright) click the button.
- ``deny=True``: it redirects back with ``error=access_denied``.
- To test the gateway's checks, ``nonce_override`` puts another nonce in the id token, and
  ``issuer_override`` another issuer.

Attributes for assertions: ``authorizations`` (the query of each authorization request) and
``token_requests`` (each token request's form), and ``refusals`` (why the token endpoint
refused, in words). Change ``user``, ``roles``, ``groups``, ``interactive`` or ``deny``
between sign-ins as needed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["LocalIdp"]


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: str
    roles: list[str]
    groups: list[str]


class LocalIdp:
    """A running provider (a context manager: started on enter, stopped on exit)."""

    def __init__(
        self,
        *,
        user: str = "oidc-user",
        roles: list[str] | None = None,
        groups: list[str] | None = None,
        client_id: str = "bastion-console",
        client_secret: str | None = None,
        interactive: bool = False,
    ) -> None:
        self.user = user
        self.roles = roles if roles is not None else ["admin"]
        self.groups = groups if groups is not None else []
        self.client_id = client_id
        self.client_secret = client_secret
        self.interactive = interactive
        self.deny = False
        self.nonce_override: str | None = None
        self.issuer_override: str | None = None
        self.authorizations: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.refusals: list[str] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = "idp-" + secrets.token_hex(4)
        self._codes: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- life --------------------------------------------------------------------------------

    def start(self) -> LocalIdp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> LocalIdp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def issuer(self) -> str:
        """The provider's URL, which is also its issuer (``iss``)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- documents ---------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }

    def jwks(self) -> dict[str, Any]:
        key: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        key.update(kid=self._kid, use="sig", alg="RS256")
        return {"keys": [key]}

    def id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer_override or self.issuer,
            "sub": grant.user,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "role": grant.roles,
            "groups": grant.groups,
        }
        nonce = self.nonce_override if self.nonce_override is not None else grant.nonce
        if nonce is not None:
            claims["nonce"] = nonce
        return jwt.encode(claims, self._key, "RS256", headers={"kid": self._kid})

    # -- the flow ----------------------------------------------------------------------------

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """The authorization endpoint: a redirect back (or the sign-in page)."""
        self.authorizations.append(query)
        redirect = query.get("redirect_uri", "")
        if (
            query.get("client_id") != self.client_id
            or query.get("response_type") != "code"
            or not redirect.startswith(("http://127.0.0.1:", "http://localhost:"))
        ):
            return 400, {"content-type": "text/plain"}, b"invalid authorization request"
        if self.interactive:
            return 200, {"content-type": "text/html; charset=utf-8"}, self._page(query)
        return self.approve(query)

    def approve(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """The user said yes (or, with ``deny``, no): back to the redirect URI."""
        redirect, state = query.get("redirect_uri", ""), query.get("state", "")
        if self.deny:
            answer = {"error": "access_denied", "state": state}
        elif query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            answer = {"error": "invalid_request", "state": state}
        else:
            code = secrets.token_urlsafe(24)
            with self._lock:
                self._codes[code] = _Grant(
                    self.client_id, redirect, query["code_challenge"], query.get("nonce"),
                    self.user, list(self.roles), list(self.groups),
                )  # fmt: skip
            answer = {"code": code, "state": state}
        sep = "&" if "?" in redirect else "?"
        return 302, {"location": f"{redirect}{sep}{urlencode(answer)}"}, b""

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        """The token endpoint: an id token for a good code and verifier."""
        self.token_requests.append(form)
        with self._lock:
            grant = self._codes.pop(form.get("code", ""), None)  # a code works once
        problem = self._problem(form, authorization, grant)
        if problem is not None or grant is None:
            self.refusals.append(problem or "unknown code")
            return 400, {"error": "invalid_grant"}
        return 200, {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": self.id_token(grant),
        }

    def _problem(
        self, form: dict[str, str], authorization: str | None, grant: _Grant | None
    ) -> str | None:
        if form.get("grant_type") != "authorization_code":
            return "grant_type"
        if grant is None:
            return "unknown code"
        if form.get("redirect_uri") != grant.redirect_uri:
            return "redirect_uri differs"
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if not hmac.compare_digest(challenge, grant.challenge):
            return "code_verifier does not match the challenge"
        if self.client_secret is not None:
            expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode())
            if authorization != "Basic " + expected.decode():
                return "client authentication"
        elif form.get("client_id") != grant.client_id:
            return "client_id"
        return None

    def _page(self, query: dict[str, str]) -> bytes:
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in query.items()
        )
        return (
            "<!doctype html><html><head><title>Test IdP</title></head><body>"
            f"<p>Sign in as {html.escape(self.user)}</p>"
            f'<form method="post" action="/approve">{fields}'
            '<button id="approve" type="submit">Sign in</button></form></body></html>'
        ).encode()


def _handler(idp: LocalIdp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/.well-known/openid-configuration":
                self._json(200, idp.discovery())
            elif parts.path == "/jwks":
                self._json(200, idp.jwks())
            elif parts.path == "/authorize":
                self._send(*idp.authorize(query))
            else:
                self._send(404, {"content-type": "text/plain"}, b"not found")

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            path = urlsplit(self.path).path
            if path == "/token":
                self._json(*idp.token(form, self.headers.get("authorization")))
            elif path == "/approve":
                self._send(*idp.approve(form))
            else:
                self._send(404, {"content-type": "text/plain"}, b"not found")

        def _json(self, status: int, body: dict[str, Any]) -> None:
            headers = {"content-type": "application/json", "cache-control": "no-store"}
            self._send(status, headers, json.dumps(body).encode())

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler
