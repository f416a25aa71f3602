"""Build the gateway application from settings: wiring only, no logic."""

from __future__ import annotations

from collections.abc import Sequence

from bastion.admin.api import AdminApi
from bastion.admin.overview import Overview
from bastion.admin.reloading import ReloadHandle
from bastion.admin.service import AdminService
from bastion.auth.apikeys import ApiKeyAuthenticator, ApiKeyRecord
from bastion.auth.clientcert import ClientCertificateAuthenticator
from bastion.auth.guard import FailureGuard
from bastion.auth.htpasswd import HtpasswdAuthenticator
from bastion.auth.identity import Authenticator
from bastion.auth.jwks import KeySet
from bastion.auth.tokens import JwtAuthenticator
from bastion.console.build import ConsoleParts, build_console
from bastion.console.static import StaticFiles
from bastion.limits.backends import build_limiter
from bastion.limits.limiter import Limiter
from bastion.limits.plan import Planner
from bastion.observability.access_log import AccessLogWriter
from bastion.observability.instruments import GatewayMetrics
from bastion.observability.traces import TraceExporter
from bastion.observability.watches import watch_services, watch_traces
from bastion.pipeline.accept import Acceptor
from bastion.pipeline.account import Account
from bastion.pipeline.admit import Admit
from bastion.pipeline.authenticate import Authenticate
from bastion.pipeline.authorize import Authorize
from bastion.pipeline.endpoints import (
    DEFAULT_ENDPOINTS,
    METRICS_ENDPOINT,
    EndpointKind,
    EndpointTable,
)
from bastion.pipeline.fields import FieldPolicy
from bastion.pipeline.forward import Forward
from bastion.pipeline.gateway import Gateway
from bastion.pipeline.ownership import Ownership
from bastion.pipeline.readiness import Readiness
from bastion.pipeline.route import ModelRegistry
from bastion.pipeline.tracing import Tracer
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
from bastion.store.owners import OwnerLedger, ResponseOwners
from bastion.store.sessions import SessionLedger
from bastion.store.store import Store
from bastion.store.sync import StoreSync
from bastion.store.usage import Prices, UsageQueue
from bastion.upstream.balancer import UpstreamSet
from bastion.upstream.client import UpstreamPool
from bastion.upstream.health import HealthChecker

__all__ = ["Services", "authenticators", "build_endpoints", "build_gateway"]


def build_endpoints(settings: Settings, *, admin: bool = True) -> EndpointTable:
    """The route table; control routes are absent unless administrators may use them, the
    admin API and the console when there is no store to administer (the console also when
    it is turned off), metrics when they are off."""
    console = admin and settings.console_on
    allow_control = settings.routes.control == "admin"
    return EndpointTable(
        tuple(
            r
            for r in DEFAULT_ENDPOINTS
            if (allow_control or r.kind is not EndpointKind.CONTROL)
            and (admin or r.kind is not EndpointKind.ADMIN)
            and (console or r.kind is not EndpointKind.CONSOLE)
            and (settings.metrics.enabled or r is not METRICS_ENDPOINT)
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
    ) -> None:
        self.pool = pool
        self.access_log = access_log
        self.store = store
        self.draining = False
        """Set by the server on SIGTERM or SIGINT: ``/ready`` answers 503 from then on."""
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
        self.sessions = SessionLedger(store) if store is not None else None
        """Console sessions (in the store, shared with the other workers and replicas)."""
        self._console_files: StaticFiles | None = None
        self.owners = ResponseOwners(
            settings.responses,
            OwnerLedger(store) if store is not None else None,
            self.store_calls,
        )
        """Who owns each stored response (shared with the other replicas through the store)."""
        self.metrics = (
            GatewayMetrics(settings.metrics, _provider(settings))
            if settings.metrics.enabled
            else None
        )
        self.traces = TraceExporter(settings.tracing) if settings.tracing.enabled else None
        """Where traced requests' spans go (tracing settings change only with a restart)."""
        self._limits = settings.limits
        self._limiter: Limiter | None = None
        self._guard: tuple[BruteForceSettings, FailureGuard] | None = None
        self._htpasswd: tuple[HtpasswdSettings, HtpasswdAuthenticator] | None = None
        self._jwt_keys: tuple[JwtSettings, KeySet] | None = None
        if self.metrics is not None:
            watch_services(
                self.metrics,
                self.upstreams,
                limiter=lambda: self._limiter,
                guard=lambda: self._guard[1] if self._guard is not None else None,
                audit=self.audit,
                access_log=access_log,
                usage=self.usage,
                owners=self.owners,
                sync=self.sync,
                calls=self.store_calls,
                keys_valid_until=lambda: self.api_keys.store_valid_until,
            )
            if self.traces is not None:
                watch_traces(self.metrics, self.traces)

    def limiter(self) -> Limiter:
        """The limiter, made on first need (a configuration without limits never makes one)."""
        if self._limiter is None:
            self._limiter = build_limiter(self._limits)
        return self._limiter

    def store_state(self) -> str:
        """``ok``, ``unreachable`` (store calls are failing) or ``off``."""
        if self.store_calls is None:
            return "off"
        return "unreachable" if self.store_calls.outage.ongoing else "ok"

    def limits_state(self) -> dict[str, str]:
        """The limiter's backend, and whether it answers (Redis: what happens when not)."""
        limits = self._limits
        failing = bool(getattr(self._limiter, "failing", False))
        state = {"backend": limits.backend, "state": "failing" if failing else "ok"}
        if limits.backend == "redis":
            state["on_backend_failure"] = limits.on_backend_failure
        return state

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

    def console_files(self) -> StaticFiles:
        """The console's pages, read from the package once."""
        if self._console_files is None:
            self._console_files = StaticFiles()
        return self._console_files

    def guard(self, settings: BruteForceSettings) -> FailureGuard:
        """The brute-force guard; what it knows survives a reload unless its settings change."""
        if self._guard is None or self._guard[0] != settings:
            self._guard = (settings, FailureGuard(settings))
        return self._guard[1]

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
            entries = gateway.models.entries()
            self.metrics.set_models(
                [e.name for e in entries],
                {e.name: e.upstream_model for e in entries if e.upstream_model},
                lambda: [((e.name,), e.balancer.available_count()) for e in entries],
            )
        self.upstreams.retain(gateway.models.origins())

    async def start(self) -> None:
        """Load the identity store's keys (an unreachable store fails the start) and start
        the background work: key synchronization, health checks."""
        if self.sync is not None:
            await self.sync.start()
        self.owners.start()
        self.health.start()
        if self.traces is not None:
            self.traces.start()

    async def stop(self) -> None:
        """Once serving stopped: flush what is buffered (access log, audit, usage, last-used
        times, owners of stored responses) and close the limiter."""
        await self.health.stop()
        if self.access_log is not None:
            self.access_log.flush()
        if self.sync is not None:
            await self.sync.stop()
        await self.owners.stop()
        if self.store_calls is not None:
            self.store_calls.close()
        if self._limiter is not None:
            await self._limiter.aclose()
        if self.traces is not None:
            await self.traces.stop()


def _provider(settings: Settings) -> str:
    """The ``gen_ai.provider.name`` of the metrics: the managed engine's kind, or vLLM, which
    Bastion's upstreams are (the value is not one of the conventions' well-known ones)."""
    return settings.engine.kind if settings.uses_engine else "vllm"


def build_gateway(
    settings: Settings,
    services: Services,
    models: tuple[ModelSettings, ...],
    *,
    reload: ReloadHandle | None = None,
) -> Gateway:
    """A gateway for ``settings`` on top of long-lived ``services``; with a store, also its
    admin API (whose reload operation asks ``reload``). Only what depends on the
    configuration is made here."""
    policy = Policy(settings)
    store = services.store
    registry = ModelRegistry(models, services.upstreams, settings.upstream.health.path)
    admin = console = None
    if store is not None:
        assert services.sync is not None and services.store_calls is not None
        service = AdminService(store, policy, Prices.of(settings.usage))
        overview = Overview(
            registry, settings.limits, settings.upstream.health.enabled, settings.usage.currency
        )
        admin = AdminApi(
            service, services.sync, reload, calls=services.store_calls, overview=overview
        )
        console = _console(settings, services, policy)
    tracer = None if services.traces is None else Tracer(settings.tracing, services.traces)
    readiness = Readiness(registry, services, checked=settings.upstream.health.enabled)
    return Gateway(
        endpoints=build_endpoints(settings, admin=admin is not None),
        acceptor=Acceptor(settings.http),
        authenticate=Authenticate(
            authenticators(settings, services, policy),
            services.guard(settings.auth.brute_force),
            _client_certificates(settings, policy),
            services.metrics,
            sessions=console.sessions if console is not None else None,
        ),
        authorize=Authorize(policy, FieldPolicy(settings.fields, policy.roles)),
        models=registry,
        forward=Forward(services.pool, settings.upstream),
        ownership=Ownership(services.owners, registry, settings.upstream.max_sse_event_bytes),
        account=Account(
            settings.logging,
            services.access_log,
            services.audit if settings.store.audit_refused else None,
            services.usage,
            services.metrics,
            tracer,
        ),
        readiness=readiness,
        admin=admin,
        console=console.handler if console is not None else None,
        admit=_admit(settings, services),
        metrics=services.metrics,
        tracer=tracer,
    )


def _console(settings: Settings, services: Services, policy: Policy) -> ConsoleParts | None:
    """The web console, when it is on (it needs the store, which keeps its sessions)."""
    if not settings.console_on or services.sessions is None or services.store_calls is None:
        return None
    jwt = settings.auth.jwt
    return build_console(
        settings,
        policy=policy,
        ledger=services.sessions,
        calls=services.store_calls,
        api_keys=services.api_keys,
        guard=services.guard(settings.auth.brute_force),
        audit=services.audit,
        files=services.console_files(),
        provider_keys=services.jwt_keys(jwt) if jwt is not None else None,
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
        max_event_bytes=settings.upstream.max_sse_event_bytes,
    )
