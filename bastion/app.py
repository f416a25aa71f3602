"""Build the gateway application from settings: wiring only, no logic."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from bastion.admin.api import AdminApi
from bastion.admin.service import AdminService
from bastion.auth.apikeys import ApiKeyAuthenticator, ApiKeyRecord
from bastion.auth.clientcert import ClientCertificateAuthenticator
from bastion.auth.guard import FailureGuard
from bastion.auth.htpasswd import HtpasswdAuthenticator
from bastion.auth.identity import Authenticator
from bastion.auth.jwks import KeySet
from bastion.auth.tokens import JwtAuthenticator
from bastion.errors import NotFoundError
from bastion.limits.backends import build_limiter
from bastion.limits.limiter import Limiter
from bastion.limits.plan import Planner
from bastion.observability.instruments import GatewayMetrics
from bastion.pipeline.accept import Acceptor
from bastion.pipeline.account import AccessLogWriter, Account
from bastion.pipeline.admit import Admit
from bastion.pipeline.authenticate import Authenticate
from bastion.pipeline.authorize import Authorize
from bastion.pipeline.forward import Forward
from bastion.pipeline.gateway import Gateway
from bastion.pipeline.resolve import ModelRegistry
from bastion.pipeline.routes import DEFAULT_ROUTES, METRICS_ROUTE, RouteKind, RouteTable
from bastion.policy.policy import Policy
from bastion.settings import (
    BruteForceSettings,
    HtpasswdSettings,
    JwtSettings,
    ModelSettings,
    Settings,
)
from bastion.store.audit import AuditTrail
from bastion.store.calls import StoreCalls
from bastion.store.store import Store
from bastion.store.sync import StoreSync
from bastion.store.usage import Prices, UsageQueue
from bastion.upstream.balancer import UpstreamSet
from bastion.upstream.client import UpstreamPool
from bastion.upstream.health import HealthChecker, Readiness

if TYPE_CHECKING:
    from bastion.server.reload import ReloadReport

__all__ = ["Services", "authenticators", "build_gateway", "build_routes"]


def build_routes(settings: Settings, *, admin: bool = True) -> RouteTable:
    """The route table; control routes are absent unless administrators may use them, the
    admin API when there is no store to administer, metrics when they are off."""
    allow_control = settings.routes.control == "admin"
    return RouteTable(
        tuple(
            r
            for r in DEFAULT_ROUTES
            if (allow_control or r.kind is not RouteKind.CONTROL)
            and (admin or r.kind is not RouteKind.ADMIN)
            and (settings.metrics.enabled or r is not METRICS_ROUTE)
        )
    )


def authenticators(
    settings: Settings, services: Services, policy: Policy
) -> tuple[Authenticator, ...]:
    """One authenticator per configured credential kind, API keys first. What they have
    learnt (verified htpasswd passwords, the identity provider's keys) is kept across
    reloads that leave their settings alone."""
    found: list[Authenticator] = [services.api_keys]
    if settings.auth.htpasswd is not None:
        found.append(services.htpasswd(settings.auth.htpasswd))
    if settings.auth.jwt is not None:
        keys = services.jwt_keys(settings.auth.jwt)
        found.append(JwtAuthenticator(settings.auth.jwt, known_roles=policy.roles, keys=keys))
    return tuple(found)


def _client_certificates(
    settings: Settings, policy: Policy
) -> ClientCertificateAuthenticator | None:
    """Names callers without an ``Authorization`` header by their client certificate."""
    if settings.auth.client_certificate is None:
        return None
    return ClientCertificateAuthenticator(settings.auth.client_certificate, policy.roles)


class Services:
    """What outlives a configuration: connections, upstream health, limiter state, queues and
    the identity store's synchronizer. Built once per process; every gateway built by
    :func:`build_gateway` (at start and at each reload) uses the same ones."""

    def __init__(
        self,
        settings: Settings,
        *,
        keys: Sequence[ApiKeyRecord],
        pool: UpstreamPool,
        access_log: AccessLogWriter | None = None,
        store: Store | None = None,
        engine_alive: Callable[[], bool] | None = None,
    ) -> None:
        self.pool = pool
        self.access_log = access_log
        self.store = store
        self.engine_alive = engine_alive
        self.upstreams = UpstreamSet(settings.upstream.ejection)
        self.health = HealthChecker(pool, self.upstreams, settings.upstream.health)
        self.api_keys = ApiKeyAuthenticator(keys)
        self.audit = AuditTrail(to_store=store is not None)
        self.usage = (
            UsageQueue(settings.usage.max_pending)
            if store is not None and settings.usage.enabled
            else None
        )
        self.store_calls: StoreCalls | None = None
        """Where store work runs (threads of its own, deadlines); with a store only."""
        self.sync: StoreSync | None = None
        if store is not None:
            self.store_calls = StoreCalls(settings.store)
            self.sync = StoreSync(
                store,
                self.api_keys,
                keys,
                settings.store,
                self.audit,
                self.store_calls,
                self.usage,
                settings.usage.retention_days,
            )
        self.metrics = GatewayMetrics(settings.metrics) if settings.metrics.enabled else None
        if self.metrics is not None:
            self._watch(self.metrics)
        self._limits = settings.limits
        self._limiter: Limiter | None = None
        self._guard: tuple[BruteForceSettings, FailureGuard] | None = None
        self._htpasswd: tuple[HtpasswdSettings, HtpasswdAuthenticator] | None = None
        self._jwt_keys: tuple[JwtSettings, KeySet] | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.reloader: Callable[[], Awaitable[ReloadReport]] | None = None
        """Re-reads and applies the configuration (set by the server that owns the services)."""

    def _watch(self, metrics: GatewayMetrics) -> None:
        """Counters kept by the services themselves, read at scrape time."""
        metrics.watch_upstreams(self.upstreams)
        watch = metrics.watch_count
        watch(
            "bastion_limiter_fail_open_total",
            "Requests let through because the limiter's backend failed (on_backend_failure: open).",
            lambda: getattr(self._limiter, "fail_open_decisions", 0),
        )
        watch(
            "bastion_limiter_backend_failures_total",
            "Times the limiter's backend could not be reached.",
            lambda: getattr(self._limiter, "failures", 0),
        )
        watch(
            "bastion_auth_blocked_addresses_total",
            "Times an address was blocked for repeated failed authentications.",
            lambda: self._guard[1].blocks if self._guard is not None else 0,
        )
        access_log = self.access_log
        if access_log is not None:
            watch(
                "bastion_access_log_dropped_total",
                "Access-log lines lost because the log could not be written.",
                lambda: access_log.dropped,
            )
        sync = self.sync
        if sync is not None:
            watch(
                "bastion_store_sync_failures_total",
                "Failed reads or writes of the identity store.",
                lambda: sync.failures,
            )
            watch(
                "bastion_store_key_reloads_total",
                "Times the store's keys were reloaded (an admin change on some replica).",
                lambda: sync.reloads,
            )
            calls = self.store_calls
            assert calls is not None  # made with the sync
            watch(
                "bastion_store_failures_total",
                "Store calls (admin API, sync) that failed: the store unreachable or silent.",
                lambda: calls.failures,
            )
            watch(
                "bastion_store_timeouts_total",
                "Store calls that got no answer within store.connect_timeout + statement_timeout.",
                lambda: calls.timeouts,
            )
            metrics.watch_gauge(
                "bastion_store_keys_valid_seconds",
                "Seconds the store's keys stay trusted without a successful poll "
                "(store.stale_after); at 0, store-issued keys are refused with 503.",
                lambda: max(0.0, min(1e9, self.api_keys.store_valid_until - time.time())),
            )
        audit = self.audit
        watch(
            "bastion_audit_events_dropped_total",
            "Audit events of refused requests lost (the queue was full).",
            lambda: audit.dropped,
        )
        usage = self.usage
        if usage is not None:
            watch(
                "bastion_usage_records_dropped_total",
                "Usage records lost before reaching the store (the queue was full).",
                lambda: usage.dropped,
            )
        watch(
            "bastion_config_reloads_total",
            "Configuration reloads applied.",
            lambda: self.reloads,
        )
        watch(
            "bastion_config_reload_failures_total",
            "Configuration reloads refused (the running configuration stayed).",
            lambda: self.reload_failures,
        )

    def limiter(self) -> Limiter:
        """The limiter, made on first need (a configuration without limits never makes one)."""
        if self._limiter is None:
            self._limiter = build_limiter(self._limits)
        return self._limiter

    def htpasswd(self, settings: HtpasswdSettings) -> HtpasswdAuthenticator:
        """The htpasswd authenticator, kept (with its cache) while its settings stay."""
        if self._htpasswd is None or self._htpasswd[0] != settings:
            self._htpasswd = (settings, HtpasswdAuthenticator(settings))
        return self._htpasswd[1]

    def jwt_keys(self, settings: JwtSettings) -> KeySet:
        """The identity provider's keys, kept while the JWT settings stay."""
        if self._jwt_keys is None or self._jwt_keys[0] != settings:
            self._jwt_keys = (settings, KeySet(settings))
        return self._jwt_keys[1]

    def guard(self, settings: BruteForceSettings) -> FailureGuard:
        """The brute-force guard; what it knows survives a reload unless its settings change."""
        if self._guard is None or self._guard[0] != settings:
            self._guard = (settings, FailureGuard(settings))
        return self._guard[1]

    async def reload(self) -> ReloadReport:
        """Re-read the configuration and apply it (the admin API's reload)."""
        if self.reloader is None:
            raise NotFoundError("This gateway has no configuration file to reload.")
        return await self.reloader()

    async def reconfigure(self, settings: Settings, keys: Sequence[ApiKeyRecord]) -> None:
        """Apply a reloaded configuration's keys and upstream health settings."""
        if self.sync is not None:
            self.sync.replace_config_keys(keys)
        else:
            self.api_keys.replace(keys)
        self.upstreams.reconfigure(settings.upstream.ejection)
        if settings.upstream.health != self.health.settings:
            await self.health.stop()
            self.health.settings = settings.upstream.health
            self.health.start()

    def adopt(self, gateway: Gateway) -> None:
        """``gateway`` now serves: label its models, check only its upstreams."""
        if self.metrics is not None:
            self.metrics.set_models(gateway.models.names)
        self.upstreams.retain(gateway.models.origins())

    async def start(self) -> None:
        """Load the identity store's keys (an unreachable store fails the start) and start
        the background work: key synchronization, health checks."""
        if self.sync is not None:
            await self.sync.start()
        self.health.start()

    async def stop(self) -> None:
        """Once serving stopped: flush what is buffered (access log, audit, usage, last-used
        times) and close the limiter."""
        await self.health.stop()
        if self.access_log is not None:
            self.access_log.flush()
        if self.sync is not None:
            await self.sync.stop()
        if self.store_calls is not None:
            self.store_calls.close()
        if self._limiter is not None:
            await self._limiter.aclose()


def build_gateway(
    settings: Settings, services: Services, models: tuple[ModelSettings, ...]
) -> Gateway:
    """A gateway for ``settings`` on top of long-lived ``services``; with a store, also its
    admin API. Only what depends on the configuration is made here."""
    policy = Policy(settings)
    store = services.store
    admin = None
    if store is not None:
        assert services.sync is not None and services.store_calls is not None
        service = AdminService(store, policy, Prices.of(settings.usage))
        admin = AdminApi(service, services.sync, services.reload, calls=services.store_calls)
    registry = ModelRegistry(models, services.upstreams, settings.upstream.health.path)
    health = settings.upstream.health
    readiness = Readiness(
        (entry.balancer for entry in registry.entries()),
        checked=health.enabled,
        extra=services.engine_alive,
    )
    return Gateway(
        routes=build_routes(settings, admin=admin is not None),
        acceptor=Acceptor(settings.http),
        authenticate=Authenticate(
            authenticators(settings, services, policy),
            services.guard(settings.auth.brute_force),
            _client_certificates(settings, policy),
            services.metrics,
        ),
        authorize=Authorize(policy),
        models=registry,
        forward=Forward(services.pool, settings.upstream),
        account=Account(
            settings.logging,
            services.access_log,
            services.audit if settings.store.audit_refused else None,
            services.usage,
            services.metrics,
        ),
        readiness=readiness,
        admin=admin,
        admit=_admit(settings, services),
        metrics=services.metrics,
    )


def _admit(settings: Settings, services: Services) -> Admit | None:
    """The admit phase, or None when there is nothing for it to do (no limit, no priority,
    no usage records)."""
    planner = Planner(settings.limits, settings.usage.prices)
    account_usage = services.usage is not None
    if not planner.active and planner.priority_off and not account_usage:
        return None
    return Admit(
        planner,
        services.limiter(),
        settings.limits.default_max_tokens,
        account_usage=account_usage,
        metrics=services.metrics,
    )
