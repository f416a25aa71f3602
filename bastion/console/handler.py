"""The console's routes under ``/ui`` (the endpoint table names each; docs/admin.md):

- ``GET /ui/`` and ``GET /ui/<file>``: the pages (:mod:`.static`), public: they hold no data;
- ``POST /ui/api/session`` (``{"key": ...}``): sign in with an API key; ``GET``: the session
  the cookie names; ``DELETE``: sign out (with the CSRF token);
- ``GET /ui/api/oidc/config``: whether OIDC sign-in is offered;
- ``GET /ui/oidc/start`` and ``GET /ui/oidc/callback``: OIDC sign-in (:mod:`.oidc`).

Every answer carries the console's security headers (the endpoint's ``headers``; refusals
get them from the one error writer) and, but for the pages, ``Cache-Control: no-store``.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qs

import orjson

from bastion.auth.identity import Identity
from bastion.console.headers import (
    API_HEADERS,
    ASSET_HEADERS,
    LOGIN_COOKIE,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    clear_cookie,
    cookie,
    read_cookie,
)
from bastion.console.oidc import OidcSignIn
from bastion.console.origin import OriginCheck
from bastion.console.sessions import KEY, OIDC, Session, SessionBook, check_csrf
from bastion.console.signin import Gatekeeper, KeySignIn, address_of
from bastion.console.static import StaticFiles
from bastion.errors import (
    AuthenticationError,
    BadRequestError,
    GatewayError,
    MethodNotAllowedError,
    NotFoundError,
    UnsupportedMediaTypeError,
)
from bastion.pipeline.accept import json_object
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import canonical_path
from bastion.pipeline.responses import send_json, send_whole
from bastion.store.audit import AuditTrail
from bastion.store.records import AuditEvent

__all__ = ["Console"]

log = logging.getLogger("bastion.console")

_CALLBACK = "/ui/oidc/callback"
_HOST = re.compile(rb"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_ERROR_CODES = frozenset(
    {"state_mismatch", "state_unknown", "nonce_mismatch", "token_refused", "no_id_token",
     "wrong_audience", "bad_request", "provider_refused"}
)  # fmt: skip
"""Refusal codes a failed OIDC sign-in may show; any other becomes a generic word."""


class Console:
    """Answers the console's routes (one per configuration, built by ``app``)."""

    def __init__(
        self,
        files: StaticFiles,
        book: SessionBook,
        gate: Gatekeeper,
        keys: KeySignIn,
        origins: OriginCheck,
        audit: AuditTrail,
        oidc: OidcSignIn | None = None,
        public_base: str | None = None,
    ) -> None:
        self._files = files
        self._book = book
        self._gate = gate
        self._keys = keys
        self._origins = origins
        self._audit = audit
        self._oidc = oidc
        self._public_base = public_base
        self._routes = {
            ("/ui/api/session", "GET"): self._session,
            ("/ui/api/session", "POST"): self._sign_in,
            ("/ui/api/session", "DELETE"): self._sign_out,
            ("/ui/api/oidc/config", "GET"): self._oidc_config,
            ("/ui/oidc/start", "GET"): self._oidc_start,
            ("/ui/oidc/callback", "GET"): self._oidc_callback,
        }

    async def __call__(self, ctx: RequestContext) -> None:
        endpoint = ctx.endpoint
        assert endpoint is not None
        if ctx.method not in endpoint.methods:
            allow = ", ".join(sorted(endpoint.methods)).encode()
            raise MethodNotAllowedError(headers=((b"allow", allow),))
        if endpoint.path == "/ui":
            await self._page(ctx)
            return
        await self._routes[(endpoint.path, ctx.method)](ctx)

    # -- pages ------------------------------------------------------------------------------

    async def _page(self, ctx: RequestContext) -> None:
        raw = ctx.scope.get("raw_path") or ctx.scope["path"].encode()
        if raw == b"/ui":  # the pages' relative links need the slash
            await self._redirect(ctx, "/ui/")
            return
        path = canonical_path(raw)
        found = self._files.find(path) if path is not None else None
        if found is None:
            raise NotFoundError()
        headers = [
            (b"content-type", found.content_type),
            (b"content-length", str(len(found.body)).encode()),
            *SECURITY_HEADERS,
            *(API_HEADERS if found.content_type.startswith(b"text/html") else ASSET_HEADERS),
        ]
        await send_whole(ctx, 200, headers, found.body)

    # -- sessions ---------------------------------------------------------------------------

    async def _session(self, ctx: RequestContext) -> None:
        session = await self._live(ctx)
        await self._answer(ctx, 200, session)

    async def _sign_in(self, ctx: RequestContext) -> None:
        self._origins(ctx.method, ctx.scope["headers"])
        if not ctx.content_type.startswith(b"application/json"):
            raise UnsupportedMediaTypeError("Send the sign-in as application/json.")
        identity = await self._keys(ctx, json_object(ctx.body).get("key"))
        await self._open(ctx, identity, KEY)

    async def _sign_out(self, ctx: RequestContext) -> None:
        self._origins(ctx.method, ctx.scope["headers"])
        session = await self._live(ctx)
        check_csrf(ctx.scope["headers"], session.record)
        session_id = read_cookie(ctx.scope["headers"], SESSION_COOKIE)
        assert session_id is not None  # _live found it
        await self._book.revoke(session_id)
        self._record(ctx, session, "console.sign_out")
        headers = [
            *SECURITY_HEADERS,
            *API_HEADERS,
            clear_cookie(SESSION_COOKIE, secure=self._secure(ctx)),
        ]
        await send_whole(ctx, 204, headers, b"")

    async def _live(self, ctx: RequestContext) -> Session:
        session_id = read_cookie(ctx.scope["headers"], SESSION_COOKIE)
        if session_id is None:
            raise _not_signed_in()
        address = address_of(ctx)
        self._gate.guard.check(address)
        try:
            session = await self._book.live(session_id)
        except AuthenticationError:
            self._gate.guard.failed(address)  # a dead or made-up session id: a guess
            raise
        ctx.identity = session.identity
        self._gate.admit(ctx, session.identity)
        return session

    async def _open(self, ctx: RequestContext, identity: Identity, method: str) -> Session:
        """Admit ``identity`` and answer with a new session and its cookie."""
        ctx.identity = identity
        self._gate.admit(ctx, identity)
        session_id, session = await self._book.open(identity, method)
        self._record(ctx, session, "console.sign_in")
        await self._answer(ctx, 200, session, self._session_cookie(ctx, session_id))
        return session

    async def _answer(
        self,
        ctx: RequestContext,
        status: int,
        session: Session,
        *extra: tuple[bytes, bytes],
    ) -> None:
        access = self._gate.access(session.identity)
        record = session.record
        body = {
            "principal": record.principal,
            "role": session.identity.role,
            "permissions": sorted(access.routes) if access is not None else [],
            "csrf": record.csrf,
            "expires_at": int(record.expires_at),
            "method": record.method,
        }
        await send_json(ctx, status, orjson.dumps(body), (*SECURITY_HEADERS, *API_HEADERS, *extra))

    def _session_cookie(self, ctx: RequestContext, session_id: str) -> tuple[bytes, bytes]:
        lifetime = int(self._book.lifetime)
        return cookie(SESSION_COOKIE, session_id, max_age=lifetime, secure=self._secure(ctx))

    def _secure(self, ctx: RequestContext) -> bool:
        """Whether the browser reached the gateway over TLS (directly, or per the public
        URL a proxy serves it under)."""
        base = self._public_base
        return ctx.scope.get("scheme") == "https" or (
            base is not None and base.startswith("https:")
        )

    def _record(self, ctx: RequestContext, session: Session, action: str) -> None:
        identity = session.identity
        self._audit.record(
            AuditEvent(
                at=time.time(),
                actor=identity.principal,
                action=action,
                target=identity.principal,
                outcome="ok",
                status=200,
                credential=identity.credential_id,
                address=address_of(ctx),
                request_id=ctx.request_id,
                detail={"method": session.record.method},
            )
        )

    # -- OIDC -------------------------------------------------------------------------------

    async def _oidc_config(self, ctx: RequestContext) -> None:
        body = b'{"enabled":true}' if self._oidc is not None else b'{"enabled":false}'
        await send_json(ctx, 200, body, (*SECURITY_HEADERS, *API_HEADERS))

    async def _oidc_start(self, ctx: RequestContext) -> None:
        oidc = self._oidc
        if oidc is None:
            raise NotFoundError()
        self._gate.attempt(ctx)
        location, state = await oidc.start(self._base(ctx) + _CALLBACK)
        binding = cookie(
            LOGIN_COOKIE, state, max_age=int(oidc.login_timeout), secure=self._secure(ctx),
            path="/ui/oidc", same_site="Lax",
        )  # fmt: skip
        await self._redirect(ctx, location, binding)

    async def _oidc_callback(self, ctx: RequestContext) -> None:
        oidc = self._oidc
        if oidc is None:
            raise NotFoundError()
        forget = clear_cookie(LOGIN_COOKIE, secure=self._secure(ctx), path="/ui/oidc")
        query = parse_qs(ctx.scope.get("query_string", b"").decode("latin-1"))
        address = address_of(ctx)
        try:
            self._gate.guard.check(address)
            if "error" in query:
                raise AuthenticationError(code="provider_refused")
            state, code = query.get("state", [""])[-1], query.get("code", [""])[-1]
            bound = read_cookie(ctx.scope["headers"], LOGIN_COOKIE)
            try:
                identity = await oidc.finish(state, code, bound)
            except AuthenticationError:
                self._gate.guard.failed(address)
                raise
            ctx.identity = identity
            self._gate.admit(ctx, identity)
            session_id, session = await self._book.open(identity, OIDC)
        except GatewayError as error:
            ctx.error = error  # the access log and the audit trail see the refusal
            log.info(
                "console OIDC sign-in refused code=%s request_id=%s", error.code, ctx.request_id
            )
            await self._redirect(ctx, f"/ui/#signin?error={_shown(error)}", forget)
            return
        self._record(ctx, session, "console.sign_in")
        await self._redirect(ctx, "/ui/", self._session_cookie(ctx, session_id), forget)

    async def _redirect(
        self, ctx: RequestContext, location: str, *cookies: tuple[bytes, bytes]
    ) -> None:
        headers = [
            (b"location", location.encode("ascii")),
            (b"content-length", b"0"),
            *SECURITY_HEADERS,
            *API_HEADERS,
            *cookies,
        ]
        await send_whole(ctx, 302, headers, b"")

    def _base(self, ctx: RequestContext) -> str:
        """The gateway's URL as the browser knows it (``console.oidc.redirect_base``, else
        the scheme and the Host header, which must look like a host)."""
        if self._public_base is not None:
            return self._public_base
        host = next((v for n, v in ctx.scope["headers"] if n == b"host"), b"")
        if _HOST.fullmatch(host) is None:
            raise BadRequestError("The request has no usable Host header.")
        scheme = "https" if ctx.scope.get("scheme") == "https" else "http"
        return f"{scheme}://{host.decode('ascii')}"


def _not_signed_in() -> AuthenticationError:
    """No session cookie at all: every console load asks before its sign-in page, so this
    is no credential refused and is not written to the audit trail (a cookie that names no
    live session is, and counts against the brute-force guard)."""
    error = AuthenticationError("Not signed in.", code="not_signed_in")
    error.audited = True  # i.e. nothing left for the audit trail to record
    return error


def _shown(error: GatewayError) -> str:
    """A short, fixed word for the page (never the provider's own text)."""
    if error.code in _ERROR_CODES:
        return str(error.code)
    if error.status == 403:
        return "forbidden"
    if error.status == 429:
        return "rate_limited"
    if error.status == 503:
        return "provider_unavailable"
    return "failed"
