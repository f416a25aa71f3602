"""The console for one configuration: its handler, and the session check the admin API's
``authenticate`` phase asks (wiring only; ``app`` calls it)."""

from __future__ import annotations

from dataclasses import dataclass

from bastion.auth.apikeys import ApiKeyAuthenticator
from bastion.auth.guard import FailureGuard
from bastion.auth.jwks import KeySet, http_call
from bastion.auth.tokens import JwtAuthenticator
from bastion.console.handler import Console
from bastion.console.oidc import OidcSignIn, id_token_settings
from bastion.console.origin import OriginCheck
from bastion.console.sessions import SessionBook, SessionGate
from bastion.console.signin import Gatekeeper, KeySignIn
from bastion.console.static import StaticFiles
from bastion.policy.policy import Policy
from bastion.settings import JwtSettings, Settings
from bastion.store.audit import AuditTrail
from bastion.store.calls import StoreCalls
from bastion.store.sessions import SessionLedger

__all__ = ["ConsoleParts", "build_console"]


@dataclass(frozen=True, slots=True)
class ConsoleParts:
    handler: Console
    sessions: SessionGate


def build_console(
    settings: Settings,
    *,
    policy: Policy,
    ledger: SessionLedger,
    calls: StoreCalls,
    api_keys: ApiKeyAuthenticator,
    guard: FailureGuard,
    audit: AuditTrail,
    files: StaticFiles,
    provider_keys: KeySet | None = None,
) -> ConsoleParts:
    """``provider_keys``: the identity provider's key set to share (``auth.jwt``'s)."""
    console = settings.console
    oidc_settings = console.oidc
    public_base = oidc_settings.redirect_base if oidc_settings is not None else None
    origins = OriginCheck(public_base)
    book = SessionBook(ledger, calls, api_keys, console)
    gate = Gatekeeper(policy, guard, console.sign_in_attempts)
    oidc = None
    if oidc_settings is not None:
        verify: JwtSettings = id_token_settings(oidc_settings, settings.auth.jwt)
        shared = provider_keys if oidc_settings.issuer is None else None
        verifier = JwtAuthenticator(verify, known_roles=policy.roles, keys=shared)
        secret = oidc_settings.client_secret
        oidc = OidcSignIn(
            oidc_settings, verifier, ledger, calls, http_call,
            client_secret=secret.resolve() if secret is not None else None,
        )  # fmt: skip
    handler = Console(
        files, book, gate, KeySignIn(api_keys, gate), origins, audit, oidc, public_base
    )
    return ConsoleParts(handler, SessionGate(book, origins))
