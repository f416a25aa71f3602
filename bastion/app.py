"""Build the gateway application from settings: wiring only, no logic."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bastion.admin.api import AdminApi
from bastion.admin.service import AdminService
from bastion.auth.apikeys import ApiKeyAuthenticator, ApiKeyRecord
from bastion.auth.guard import FailureGuard
from bastion.auth.htpasswd import HtpasswdAuthenticator
from bastion.auth.identity import Authenticator
from bastion.auth.tokens import JwtAuthenticator
from bastion.limits.backends import build_limiter
from bastion.limits.plan import Planner
from bastion.pipeline.accept import Acceptor
from bastion.pipeline.account import AccessLogWriter, Account
from bastion.pipeline.admit import Admit
from bastion.pipeline.authenticate import Authenticate
from bastion.pipeline.authorize import Authorize
from bastion.pipeline.forward import Forward
from bastion.pipeline.gateway import Gateway
from bastion.pipeline.resolve import ModelRegistry
from bastion.pipeline.routes import DEFAULT_ROUTES, RouteKind, RouteTable
from bastion.policy.policy import Policy
from bastion.settings import ModelSettings, Settings
from bastion.store.audit import AuditTrail
from bastion.store.store import Store
from bastion.store.sync import StoreSync
from bastion.store.usage import UsageQueue
from bastion.upstream.client import UpstreamPool
from bastion.upstream.health import Readiness

__all__ = ["authenticators", "build_gateway", "build_routes"]


def build_routes(settings: Settings, *, admin: bool = True) -> RouteTable:
    """The route table; control routes are absent unless administrators may use them, the
    admin API when there is no store to administer."""
    allow_control = settings.routes.control == "admin"
    return RouteTable(
        tuple(
            r
            for r in DEFAULT_ROUTES
            if (allow_control or r.kind is not RouteKind.CONTROL)
            and (admin or r.kind is not RouteKind.ADMIN)
        )
    )


def authenticators(
    settings: Settings, api_keys: ApiKeyAuthenticator, policy: Policy
) -> tuple[Authenticator, ...]:
    """One authenticator per configured credential kind, API keys first."""
    found: list[Authenticator] = [api_keys]
    if settings.auth.htpasswd is not None:
        found.append(HtpasswdAuthenticator(settings.auth.htpasswd))
    if settings.auth.jwt is not None:
        found.append(JwtAuthenticator(settings.auth.jwt, known_roles=policy.roles))
    return tuple(found)


def build_gateway(
    settings: Settings,
    *,
    models: tuple[ModelSettings, ...],
    keys: Sequence[ApiKeyRecord],
    pool: UpstreamPool,
    engine_alive: Callable[[], bool] | None = None,
    access_log: AccessLogWriter | None = None,
    store: Store | None = None,
) -> Gateway:
    """The gateway; with a ``store``, also its admin API, audit trail and key synchronizer
    (started by :meth:`Gateway.start`)."""
    policy = Policy(settings)
    api_keys = ApiKeyAuthenticator(keys)
    audit = AuditTrail(to_store=store is not None)
    usage = (
        UsageQueue(settings.usage.max_pending)
        if store is not None and settings.usage.enabled
        else None
    )
    sync = admin = None
    if store is not None:
        sync = StoreSync(
            store, api_keys, keys, settings.store, audit, usage, settings.usage.retention_days
        )
        admin = AdminApi(AdminService(store, policy), sync)
    registry = ModelRegistry(models)
    readiness = Readiness(
        (tuple(t.origin for t in entry.targets) for entry in registry.entries()),
        extra=engine_alive,
    )
    return Gateway(
        routes=build_routes(settings, admin=admin is not None),
        acceptor=Acceptor(settings.http),
        authenticate=Authenticate(
            authenticators(settings, api_keys, policy), FailureGuard(settings.auth.brute_force)
        ),
        authorize=Authorize(policy),
        models=registry,
        forward=Forward(pool),
        account=Account(
            settings.logging, access_log, audit if settings.store.audit_refused else None, usage
        ),
        readiness=readiness,
        admin=admin,
        sync=sync,
        admit=_admit(settings, account_usage=usage is not None),
    )


def _admit(settings: Settings, *, account_usage: bool) -> Admit | None:
    """The admit phase, or None when there is nothing for it to do (no limit, no priority,
    no usage records)."""
    planner = Planner(settings.limits)
    if not planner.active and planner.priority_off and not account_usage:
        return None
    return Admit(
        planner,
        build_limiter(settings.limits),
        settings.limits.default_max_tokens,
        account_usage=account_usage,
    )
