"""The one settings object: validated, frozen; unknown keys are rejected.

``bastion.sources`` reads it from the YAML file and ``BASTION_*`` environment variables.
Configuration flows from here through constructors; nothing below reads the environment,
except :class:`Secret` resolution, which happens once, at load time.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bastion.errors import ConfigError

__all__ = [
    "ApiKeyEntry",
    "AuthSettings",
    "BruteForceSettings",
    "ClientCertificateSettings",
    "ConsoleOidcSettings",
    "ConsoleSettings",
    "EngineSettings",
    "FieldsSettings",
    "HtpasswdSettings",
    "HttpSettings",
    "JwtClaims",
    "JwtSettings",
    "LimitSettings",
    "LimitsSettings",
    "LoggingSettings",
    "ModelSettings",
    "NetworkSettings",
    "PrioritySettings",
    "RedisSettings",
    "ResponsesSettings",
    "RoleSettings",
    "RoutesSettings",
    "Secret",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "TeamSettings",
    "TlsSettings",
    "TracingSettings",
    "UpstreamClientSettings",
    "UpstreamTarget",
    "UsageSettings",
    "default_state_dir",
    "parse_settings",
]

MiB = 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Model):
    """A secret value, given inline, or read from an environment variable or a file.

    In YAML: ``api_key: {env: VLLM_API_KEY}``, ``api_key: {file: /run/secrets/vllm}`` or,
    discouraged, ``api_key: {value: "..."}``. The value is resolved once, at load time, and is
    never printed: ``bastion config check`` shows ``***``.
    """

    env: str | None = None
    file: Path | None = None
    value: str | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _exactly_one(self) -> Secret:
        given = [x for x in (self.env, self.file, self.value) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'env', 'file' or 'value'")
        return self

    def resolve(self) -> str:
        """Return the secret's value; raises :class:`ConfigError` when it cannot be read."""
        if self.value is not None:
            return self.value
        if self.env is not None:
            found = os.environ.get(self.env)
            if not found:
                raise ConfigError(f"environment variable {self.env} is not set or empty")
            return found
        assert self.file is not None  # guaranteed by the validator
        try:
            text = self.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {self.file}: {exc.strerror}") from exc
        if not text:
            raise ConfigError(f"secret file {self.file} is empty")
        return text


class TlsSettings(_Model):
    """HTTPS on the gateway's own port, as Mozilla's server-side TLS recommendations say."""

    certificate: Path
    """PEM certificate chain (the server's certificate first)."""
    key: Path
    """PEM private key of the certificate."""
    client_ca: Path | None = None
    """PEM CA certificates that sign client certificates; with it, callers must present a
    certificate signed by one of them (mutual TLS), unless ``client_certificate`` says
    ``optional``."""
    client_certificate: Literal["required", "optional"] = "required"
    reload_interval: float = Field(default=10.0, gt=0)
    """Seconds between looks at the certificate, key and client CA files; when one changed,
    new handshakes use the new files (a file that cannot be loaded keeps the old ones)."""
    profile: Literal["intermediate", "modern"] = "intermediate"
    """Mozilla's profile: ``intermediate`` is TLS 1.3 and TLS 1.2 with six ECDHE suites
    (AES-GCM and ChaCha20-Poly1305, no CBC); ``modern`` is TLS 1.3 only."""
    ciphers: str | None = None
    """TLS 1.2 cipher suites in OpenSSL's list format, instead of the profile's (for the
    ``intermediate`` profile only: ``modern`` has no TLS 1.2)."""
    groups: str | None = Field(default=None, min_length=1)
    """Key-exchange groups in OpenSSL's list format (``X25519:prime256v1``), instead of the
    profiles' ``X25519:prime256v1:secp384r1``."""

    @model_validator(mode="after")
    def _ciphers_need_tls_1_2(self) -> TlsSettings:
        if self.ciphers is not None and self.profile == "modern":
            raise ValueError("ciphers sets TLS 1.2 suites, and the modern profile is TLS 1.3 only")
        return self


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    state_dir: Path | None = None
    """Where Bastion keeps its own state (bootstrap admin key, assembled model files)."""
    tls: TlsSettings | None = None
    drain_delay: float = Field(default=0.0, ge=0)
    """On SIGTERM or SIGINT: ``/ready`` answers 503 at once, and the gateway goes on
    accepting and serving for this long before it drains, so that load balancers and
    Kubernetes' endpoints controller take it out first. A second signal ends the delay."""
    drain_timeout: float = Field(default=30.0, ge=0)
    """After the drain delay: stop accepting, let requests and streams in flight finish for
    up to this long, then close what is left. Managed engines stop after the drain."""
    workers: int = Field(default=1, ge=1, le=256)
    """Processes serving the port (one core each): above 1, a supervisor binds the port once
    and runs this many workers that accept on it (docs/operations.md#several-cores)."""


class HttpSettings(_Model):
    """Limits on what a caller may send, and how long it may take to send it."""

    max_body_bytes: int = Field(default=16 * MiB, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, gt=0)
    max_headers: int = Field(default=100, gt=0)
    max_url_bytes: int = Field(default=8 * 1024, gt=0)
    request_head_timeout: float = Field(default=10.0, gt=0)
    """From the connection's opening (TLS handshake included) or the first byte of a later
    request, to the end of the request head."""
    request_body_timeout: float = Field(default=30.0, gt=0)
    keep_alive_timeout: float = Field(default=5.0, gt=0)
    write_timeout: float = Field(default=60.0, gt=0)
    """Longest time the caller may leave the gateway's writes unread (its connection's send
    buffer full); then the connection is dropped and its upstream request closed."""
    max_connections_per_address: int | None = Field(default=None, gt=0)
    """Concurrent connections one client address may hold, counted from accept (before any
    TLS handshake); one more is closed at once. Off by default: behind a load balancer or
    NAT every caller has the same address."""


class HealthCheckSettings(_Model):
    """Active health checks: each upstream is asked ``GET path`` every ``interval`` seconds."""

    enabled: bool = True
    path: str = Field(default="/health", pattern=r"^/")
    """vLLM answers 200 on ``/health`` once its engine is up."""
    interval: float = Field(default=5.0, gt=0)
    timeout: float = Field(default=2.0, gt=0)
    unhealthy_after: int = Field(default=2, ge=1)
    """Consecutive failed checks before an upstream is taken out."""
    healthy_after: int = Field(default=1, ge=1)
    """Consecutive passed checks before it is put back."""


class EjectionSettings(_Model):
    """Passive ejection: an upstream whose requests keep failing is left alone for a while."""

    failures: int = Field(default=3, ge=0)
    """Consecutive failed requests (connection errors, timeouts, 502/503/504) that eject an
    upstream; 0 never ejects."""
    duration: float = Field(default=5.0, gt=0)
    """First ejection's length; it doubles with each ejection in a row."""
    max_duration: float = Field(default=60.0, gt=0)


class UpstreamClientSettings(_Model):
    """How Bastion talks to model servers."""

    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=600.0, gt=0)
    """Longest wait for the response head; a non-streaming generation answers only when done."""
    stream_idle_timeout: float = Field(default=120.0, gt=0)
    """Longest silence between two pieces of a response body: not a total limit."""
    max_idle_connections: int = Field(default=256, ge=0)
    """Idle keep-alive connections kept per upstream."""
    idle_connection_ttl: float = Field(default=4.0, gt=0)
    """An idle connection older than this is closed rather than reused."""
    retries: int = Field(default=2, ge=0)
    """Further attempts on another upstream of the model when one fails before its response
    has begun (connection refused or reset, timeout, 502/503/504)."""
    retry_window: float = Field(default=15.0, ge=0)
    """No further attempt starts later than this many seconds after the first."""
    max_header_bytes: int = Field(default=16 * 1024, gt=0)
    """Total size of a response's header lines, interim (1xx) responses included; a larger
    head is a 502 and its connection is closed (as ``http.max_header_bytes`` for callers)."""
    max_headers: int = Field(default=100, gt=0)
    """Header lines of a response, interim responses included; more is a 502."""
    max_sse_event_bytes: int = Field(default=MiB, gt=0)
    """A stream read for its usage holds each event back until its end, up to this size; a
    larger event goes on unread as it arrives (docs/limits.md)."""
    health: HealthCheckSettings = HealthCheckSettings()
    ejection: EjectionSettings = EjectionSettings()


class UpstreamTarget(_Model):
    url: str
    api_key: Secret | None = None
    send_request_id: bool = True
    """Forward ``X-Request-Id``; off for servers that reject ids they did not make
    (llama-cpp-python's accepts only UUIDs)."""
    weight: int = Field(default=1, ge=0, le=1000)
    """Share of the model's requests relative to its other upstreams; 0 sends it none (to
    drain it before taking it away)."""
    health_path: str | None = None
    """Overrides ``upstream.health.path`` for this server."""

    @field_validator("health_path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be a path starting with /")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        value = value.rstrip("/")
        if "/" in value.split("://", 1)[1]:
            raise ValueError("give the server's root URL (http://host:port), without /v1 or a path")
        return value


class ModelSettings(_Model):
    name: str = Field(min_length=1)
    upstreams: tuple[UpstreamTarget, ...] = Field(min_length=1)
    upstream_model: str | None = None
    """The name the upstream knows the model by, when it differs from ``name``."""

    @model_validator(mode="after")
    def _weighted(self) -> ModelSettings:
        if not any(u.weight for u in self.upstreams):
            raise ValueError("at least one upstream needs a weight above 0")
        urls = [u.url for u in self.upstreams]
        if len(set(urls)) != len(urls):
            raise ValueError("an upstream URL is listed twice")
        return self


class EngineSettings(_Model):
    """A model server that Bastion starts and supervises itself (used when no model is set)."""

    kind: Literal["llama_cpp", "vllm", "none"] = "llama_cpp"
    model: str | None = None
    """llama_cpp: a GGUF path (default: the bundled Gemma 3 270M); vllm: a model name or path."""
    served_name: str = "gemma-3-270m"
    args: tuple[str, ...] = ()
    """Extra command-line arguments passed to the engine as they are."""
    ready_timeout: float = Field(default=300.0, gt=0)
    restart_backoff_max: float = Field(default=30.0, gt=0)


class ApiKeyEntry(_Model):
    """An API key declared in the config, by its hash only (see ``bastion keys generate``)."""

    name: str = Field(min_length=1)
    hash: str
    role: str = "user"
    """A built-in role (admin, operator, user, viewer) or one declared under ``roles``."""
    models: tuple[str, ...] | None = None
    """Narrow the role to these models (names or glob patterns); never widens it."""
    routes: tuple[str, ...] | None = None
    """Narrow the role to these route permissions (see docs/permissions.md)."""
    networks: tuple[str, ...] | None = None
    """Accept this key only from these networks (CIDR)."""
    expires: datetime | None = None
    """After this moment (ISO 8601 with a time zone) the key is refused. To rotate a key kept
    in git, add the new one and give the old one an expiry: both work until then."""

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-12-31T00:00:00Z")
        return value

    @field_validator("hash")
    @classmethod
    def _sha256(cls, value: str) -> str:
        prefix = "sha256:"
        digest = value[len(prefix) :]
        if not value.startswith(prefix) or len(digest) != 64:
            raise ValueError("must be 'sha256:' followed by 64 hex digits")
        try:
            bytes.fromhex(digest)
        except ValueError:
            raise ValueError("must be 'sha256:' followed by 64 hex digits") from None
        return prefix + digest.lower()


class HtpasswdSettings(_Model):
    """Users of an Apache htpasswd file, logging in with HTTP Basic."""

    file: Path
    role: str = "user"
    """The role of every user in the file, except those named in ``admins``."""
    admins: tuple[str, ...] = ()
    refuse_weak: bool = False
    """Refuse entries hashed with ``$apr1$`` (MD5) or ``{SHA}`` instead of only warning."""
    cache_ttl: float = Field(default=300.0, ge=0)
    """How long a successful check is remembered (0: never), so bcrypt is not paid per request."""
    cache_size: int = Field(default=10_000, ge=0)
    reload_interval: float = Field(default=1.0, gt=0)
    """How often, at most, the file's modification is looked for."""


_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def _public_key_algorithms(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("name at least one algorithm")
    unknown = [a for a in value if a not in _ASYMMETRIC]
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: only public-key algorithms are accepted "
            f"({', '.join(sorted(_ASYMMETRIC))})"
        )
    return value


class JwtClaims(_Model):
    """Which claims name the user, the teams and the role."""

    user: str = "sub"
    teams: str | None = "groups"
    role: str | None = "role"


class JwtSettings(_Model):
    """Bearer JWTs from an identity provider, verified with its published keys (JWKS)."""

    issuer: str = Field(min_length=1)
    """Compared exactly with the token's ``iss``."""
    audience: str | tuple[str, ...]
    """The token's ``aud`` must hold (one of) this."""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    """Accepted signature algorithms; the token's header never chooses outside this list."""
    jwks_url: str | None = None
    """Where the keys are; None: found through OIDC discovery at ``{issuer}/.well-known/...``."""
    jwks_file: Path | None = None
    """A JWKS document on disk instead (pinned keys, or no route to the provider); it is
    re-read on the same schedule as a URL would be fetched."""
    leeway: float = Field(default=30.0, ge=0, le=300)
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``, in seconds."""
    claims: JwtClaims = JwtClaims()
    admin_roles: tuple[str, ...] = ("admin",)
    """Values of the role claim that make the caller an administrator. Any other value that
    names a role (built-in or declared) gives that role; otherwise the caller is a ``user``."""
    jwks_refresh_interval: float = Field(default=300.0, gt=0)
    """How often the key set is fetched again in any case."""
    jwks_min_refresh_interval: float = Field(default=10.0, ge=0)
    """A token with an unknown key id fetches the key set again, at most this often."""

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _public_key_algorithms(value)

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSettings:
        if self.jwks_url is not None and self.jwks_file is not None:
            raise ValueError("give jwks_url or jwks_file, not both")
        return self

    @field_validator("issuer", "jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


class BruteForceSettings(_Model):
    """Addresses that keep failing to authenticate are turned away for a while."""

    max_failures: int = Field(default=20, ge=0)
    """Failures from one address within ``window`` that trigger a block (0: never block)."""
    window: float = Field(default=60.0, gt=0)
    block: float = Field(default=300.0, gt=0)
    """How long a blocked address gets 429 without its credentials being looked at."""


class ClientCertificateSettings(_Model):
    """Callers named by their verified client certificate (mutual TLS: needs
    ``server.tls.client_ca``). Used for requests without an ``Authorization`` header only."""

    user_from: Literal["common_name", "email"] = "common_name"
    """The subject's common name, or the email address (subjectAltName, else the subject's
    emailAddress) names the user."""
    role: str = "user"
    """The role of every certificate holder, except those named in ``admins``."""
    admins: tuple[str, ...] = ()


class AuthSettings(_Model):
    api_keys: tuple[ApiKeyEntry, ...] = ()
    brute_force: BruteForceSettings = BruteForceSettings()
    htpasswd: HtpasswdSettings | None = None
    jwt: JwtSettings | None = None
    client_certificate: ClientCertificateSettings | None = None

    @model_validator(mode="after")
    def _unique(self) -> AuthSettings:
        for attr in ("name", "hash"):
            seen: set[str] = set()
            for entry in self.api_keys:
                value = getattr(entry, attr)
                if value in seen:
                    shown = value if attr == "name" else "a hash"
                    raise ValueError(f"two api_keys share the same {attr} ({shown})")
                seen.add(value)
        return self


class RoleSettings(_Model):
    """A custom role: what its holders may call, on which models, from where."""

    routes: tuple[str, ...] = ("inference", "models")
    """Route permissions or groups (``inference``, ``control``, ``*``); see docs/permissions.md."""
    models: tuple[str, ...] = ("*",)
    """Model names or glob patterns (``llama-3-*``)."""
    networks: tuple[str, ...] | None = None
    """Only from these networks (CIDR); None: from anywhere the gateway accepts."""


class TeamSettings(_Model):
    """Rules for the members of a team (a store team, or a JWT's teams claim, by name).

    They narrow a member's access, never widen it; a member of several teams with rules must
    satisfy all of them."""

    models: tuple[str, ...] | None = None
    """Members may use only these models (names or glob patterns)."""
    networks: tuple[str, ...] | None = None
    """Members are served only from these networks (CIDR)."""


class NetworkSettings(_Model):
    """Which addresses may talk to the gateway at all, and which proxies to believe."""

    allow: tuple[str, ...] = ()
    """If set, only these networks (CIDR) are served; others get 403 before authentication."""
    deny: tuple[str, ...] = ()
    """These networks (CIDR) get 403 before authentication, even if allowed above."""
    trusted_proxies: tuple[str, ...] = ()
    """Peers whose X-Forwarded-For is believed (the right-most untrusted address counts)."""


class RoutesSettings(_Model):
    control: Literal["deny", "admin"] = "deny"
    """vLLM's control routes (/pause, /sleep, ...): never forwarded, or forwarded for admins."""


class FieldsSettings(_Model):
    """Request-body fields that reach into the engine (see docs/security.md)."""

    allow: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Role -> guarded fields its holders may send (``admin: [priority]``)."""
    cache_salt: Literal["off", "user", "team", "key"] = "off"
    """Set vLLM's ``cache_salt`` per user, team or key: tenants do not share prefix-cache
    entries, so none can probe another's prompts by timing (costs prefix-cache hits across
    tenants). Only for upstreams that accept the field (vLLM 0.9 and later)."""
    media_urls: Literal["public", "any"] = "public"
    """Media URLs in a request (images, audio, video) that the engine will fetch: ``public``
    refuses ``file:`` and other schemes, and http(s) URLs naming a loopback, private,
    link-local or internal host (the engine would fetch them from inside your network)."""


class StoreSettings(_Model):
    """Where users, teams, API keys and the audit trail are kept."""

    enabled: bool = True
    """False: no database at all; keys come from the config file only and there is no admin
    API (the audit trail of refused requests then goes to the log)."""
    url: str | Secret | None = None
    """``postgresql://user@host/db`` (or a secret holding it) for several replicas;
    None: a SQLite file, ``bastion.db`` in the state directory."""
    poll_interval: float = Field(default=0.5, gt=0, le=10)
    """How often each gateway asks the store whether anything changed (a revocation reaches
    every replica within this, plus the time to reload)."""
    stale_after: float = Field(default=30.0, ge=0)
    """If the store cannot be read for this long, keys it issued are refused with 503, since a
    revocation could have been missed (0: keep using the last keys read, however old)."""
    last_used_interval: float = Field(default=10.0, gt=0)
    """How often keys' last-used times are written back."""
    connect_timeout: float = Field(default=5.0, ge=2, le=300)
    """Seconds to open a connection to PostgreSQL, or to find that a pooled one still answers
    (libpq counts whole seconds, at least 2)."""
    statement_timeout: float = Field(default=10.0, gt=0, le=3600)
    """PostgreSQL cancels a statement running longer; a call that has had no answer this long
    after getting its connection is cut by Bastion (a partition never answers). With SQLite:
    how long a statement waits for another writer's lock."""
    audit_refused: bool = True
    """Record refused requests (401, 403, blocked addresses) in the audit trail."""

    @field_validator("url")
    @classmethod
    def _known_database(cls, value: str | Secret | None) -> str | Secret | None:
        if isinstance(value, str) and not value.startswith(
            ("postgresql://", "postgres://", "postgresql+psycopg://", "sqlite:///")
        ):
            raise ValueError("give a postgresql:// or sqlite:/// URL")
        return value


class LimitSettings(_Model):
    """Limits for one bucket of requests (a key, a user, a team, a model, or everything)."""

    requests_per_minute: int | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, gt=0)
    """Requests that may arrive at once (default: ``requests_per_minute``); after that they
    are admitted at the steady rate (GCRA: no burst at a window boundary)."""
    tokens_per_minute: int | None = Field(default=None, gt=0)
    count: Literal["total", "prompt", "completion"] = "total"
    """Which tokens ``tokens_per_minute`` and the budgets count."""
    concurrency: int | None = Field(default=None, gt=0)
    """Requests in flight at once (streams count until they end)."""
    tokens_per_day: int | None = Field(default=None, gt=0)
    """A budget per UTC day; exhausted: 429 ``insufficient_quota`` until the day ends."""
    tokens_per_month: int | None = Field(default=None, gt=0)
    cost_per_day: float | None = Field(default=None, gt=0)
    """A spending budget per UTC day, in ``usage.currency``, at ``usage.prices``."""
    cost_per_month: float | None = Field(default=None, gt=0)

    @property
    def limits_anything(self) -> bool:
        """Whether any limit or budget is set (``count`` or ``burst`` alone limit nothing)."""
        return any(
            x is not None
            for x in (
                self.requests_per_minute,
                self.tokens_per_minute,
                self.concurrency,
                self.tokens_per_day,
                self.tokens_per_month,
                self.cost_per_day,
                self.cost_per_month,
            )
        )


class RedisSettings(_Model):
    url: str | Secret = "redis://127.0.0.1:6379/0"
    timeout: float = Field(default=0.1, gt=0)
    """Longest wait for one limiter decision before the backend counts as failed."""
    key_prefix: str = "bastion:"
    lease_seconds: float = Field(default=30.0, gt=0)
    """A concurrency slot is a lease: a replica renews the leases of its requests still
    running every third of this, and a lease neither renewed nor given back (its replica
    died, or Redis was away) lapses after this long."""

    @model_validator(mode="after")
    def _renewal_fits_in_a_lease(self) -> RedisSettings:
        if self.lease_seconds < 3 * self.timeout:
            raise ValueError(
                "lease_seconds must be at least 3 times timeout: leases are renewed every "
                "third of lease_seconds, and a renewal may take up to timeout"
            )
        return self


class PrioritySettings(_Model):
    """vLLM's per-request ``priority`` (lower is served first, with
    ``--scheduling-policy priority``), set by the gateway; a caller's own value is replaced."""

    default: int | None = None
    roles: dict[str, int] = Field(default_factory=dict)
    teams: dict[str, int] = Field(default_factory=dict)
    """A member of several teams gets the lowest (most urgent) of their values."""


class LimitsSettings(_Model):
    """Rate limits, concurrency limits and token budgets; see docs/limits.md."""

    backend: Literal["memory", "redis"] = "memory"
    redis: RedisSettings = RedisSettings()
    on_backend_failure: Literal["closed", "open"] = "closed"
    """Redis unreachable: refuse with 503 (closed), or apply the limits per replica from
    memory (open). Either way it is counted and logged once."""
    default_max_tokens: int = Field(default=1024, gt=0)
    """Completion tokens reserved for a request that sets no ``max_tokens``."""
    per_key: LimitSettings | None = None
    per_user: LimitSettings | None = None
    per_team: LimitSettings | None = None
    per_model: LimitSettings | None = None
    all: LimitSettings | None = None
    """Everything through this gateway (all replicas, with Redis) together."""
    keys: dict[str, LimitSettings] = Field(default_factory=dict)
    """Per key, by the store's key id (``key_...``) or a config key's name; instead of
    ``per_key`` for that key."""
    users: dict[str, LimitSettings] = Field(default_factory=dict)
    roles: dict[str, LimitSettings] = Field(default_factory=dict)
    """Per principal with this role; a user named under ``users`` takes that instead."""
    teams: dict[str, LimitSettings] = Field(default_factory=dict)
    models: dict[str, LimitSettings] = Field(default_factory=dict)
    priority: PrioritySettings = PrioritySettings()

    @property
    def cost_budgets(self) -> bool:
        """Whether any bucket has a spending budget (which needs ``usage.prices``)."""
        return any(x.cost_per_day or x.cost_per_month for x in self._every())

    @property
    def configured(self) -> bool:
        """Whether any bucket has a limit or budget (priority alone limits nothing)."""
        return any(x.limits_anything for x in self._every())

    def _every(self) -> list[LimitSettings]:
        single = (self.per_key, self.per_user, self.per_team, self.per_model, self.all)
        named = (self.keys, self.users, self.roles, self.teams, self.models)
        return [*(x for x in single if x), *(v for d in named for v in d.values())]


class PriceSettings(_Model):
    """What a model's tokens cost, per million, in ``usage.currency``."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class UsageSettings(_Model):
    """Usage records: one per inference request, kept in the store (see docs/limits.md)."""

    enabled: bool = True
    """Record usage (needs the store). Also makes every stream report its usage."""
    retention_days: float = Field(default=90.0, gt=0)
    """Raw records older than this are deleted; hourly rollups are kept."""
    max_pending: int = Field(default=100_000, gt=0)
    """Records waiting for the store (a slow or absent database) before the oldest are
    dropped and counted."""
    prices: dict[str, PriceSettings] = Field(default_factory=dict)
    """Per model (``*``: any other), for the cost column of usage reports."""
    currency: str = Field(default="USD", min_length=1, max_length=16)


class ResponsesSettings(_Model):
    """Stored responses (``/v1/responses/{id}``): who owns each (see docs/security.md)."""

    max_owners: int = Field(default=100_000, gt=0)
    """Owners each replica keeps in memory, the least recently used forgotten first (the
    store still has them); also the most waiting to be written while the store is away."""
    retention_days: float = Field(default=30.0, gt=0)
    """Owners older than this are deleted from the store: their responses are then out of
    reach through the gateway."""


class MetricsSettings(_Model):
    """Prometheus metrics: ``GET /metrics`` on the gateway's port for callers with the
    ``metrics`` permission (administrators have it), and, with ``listen``, on a separate
    listener without authentication for a scraper on a private network."""

    enabled: bool = True
    listen: str | None = None
    """``host:port`` of the separate listener, e.g. ``127.0.0.1:9464``."""
    team_label: bool = False
    """Label request and token series by team (the first ``max_teams`` seen; later ones
    are counted as ``other``)."""
    max_teams: int = Field(default=50, gt=0, le=1000)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, such as 127.0.0.1:9464")
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class TracingSettings(_Model):
    """OpenTelemetry traces of the gateway's requests, exported over OTLP/HTTP (protobuf).

    The sampling decision is taken when a request starts (``sample_ratio``, or the caller's
    decision when its trace context is trusted and ``parent_based``); a request not sampled
    then may still be kept at its end, when it failed (``error_ratio``) or was slow
    (``slow_ratio``). Nothing about a request is built for export unless it is kept. Prompts
    and completions are never recorded. See docs/operations.md, "Tracing"."""

    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """The collector's OTLP/HTTP traces URL, path included (``/v1/traces`` as a rule)."""
    headers: dict[str, Secret] = Field(default_factory=dict)
    """Headers sent with every export (a vendor's API key, ``authorization``)."""
    compression: Literal["none", "gzip"] = "none"
    timeout: float = Field(default=10.0, gt=0)
    """Longest wait for one export (connecting included); then it is retried or dropped."""
    service_name: str = Field(default="bastion", min_length=1)
    resource_attributes: dict[str, str | bool | int | float] = Field(default_factory=dict)
    """More resource attributes (``deployment.environment.name: prod``)."""
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of requests traced, decided on the trace id (as OpenTelemetry's ratio sampler)."""
    parent_based: bool = True
    """A caller's trusted ``traceparent`` decides instead of ``sample_ratio``."""
    error_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of the requests not sampled that are kept when they failed (a 5xx, or a
    response cut by the upstream)."""
    slow_threshold: float | None = Field(default=None, gt=0)
    """Seconds to the response's first byte (or to the end, without a response) that make a
    request slow; None: no request counts as slow."""
    slow_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of the slow requests not sampled that are kept."""
    trust_incoming: bool = False
    """Continue every caller's ``traceparent``/``tracestate``; otherwise only those of peers
    in ``trusted_networks``, and the others are replaced, not forwarded."""
    trusted_networks: tuple[str, ...] = ()
    """Peers (CIDR) whose trace context is continued, such as your own front proxies."""
    record_principal: bool = False
    """Put the caller's principal on its spans (``enduser.id``)."""
    record_teams: bool = False
    """Put the caller's teams on its spans (``bastion.teams``)."""
    max_queue_spans: int = Field(default=4096, gt=0)
    """Spans waiting for export; more are dropped and counted."""
    max_batch_spans: int = Field(default=512, gt=0)
    export_interval: float = Field(default=2.0, gt=0)
    """Seconds between exports (one starts sooner when a batch is full)."""

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a network (CIDR)") from None
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, Secret]) -> dict[str, Secret]:
        for name in value:
            if not name or not all(c.isalnum() or c in "-_" for c in name) or not name.isascii():
                raise ValueError(f"{name!r} is not a header name")
        return value


class ConsoleOidcSettings(_Model):
    """Sign-in to the web console through an OpenID Connect provider: the authorization code
    flow with PKCE (S256), ``state`` and ``nonce``. The provider is ``auth.jwt``'s unless
    ``issuer`` names another; roles come from the same claims as bearer tokens."""

    client_id: str = Field(min_length=1, max_length=256)
    """The console's client id at the provider; also the ``aud`` its id tokens must carry."""
    client_secret: Secret | None = None
    """For a confidential client (sent with HTTP Basic to the token endpoint); None: a public
    client, PKCE alone."""
    issuer: str | None = None
    """A provider other than ``auth.jwt``'s (None: ``auth.jwt.issuer``, and its key source,
    algorithms, claims and admin roles)."""
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    redirect_base: str | None = None
    """The gateway's public URL (``https://gateway.example.com``); the provider sends the
    browser back to ``{redirect_base}/ui/oidc/callback``. None: built from the request's
    Host header (register the exact redirect URI at the provider, which then refuses any
    other); set it behind a proxy."""
    claims: JwtClaims | None = None
    """With a separate ``issuer``: which claims name the user, teams and role (default:
    ``sub``, ``groups``, ``role``)."""
    admin_roles: tuple[str, ...] | None = None
    """With a separate ``issuer``: role claim values that make an administrator."""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    """With a separate ``issuer``: accepted id token signature algorithms."""
    login_timeout: float = Field(default=300.0, gt=0, le=3600)
    """How long a sign-in started at the provider may take to come back."""

    @field_validator("issuer", "redirect_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") if value is not None and value.endswith("/") else value

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("must include openid")
        if any(not s or not s.isascii() or " " in s for s in value):
            raise ValueError("scopes are words without spaces")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _public_key_algorithms(value)


class ConsoleSettings(_Model):
    """The web console under ``/ui/`` (docs/admin.md): on with the store, off without it."""

    enabled: bool = True
    """False: no ``/ui`` at all (the admin API stays). Needs the store: asking for the
    console with ``store.enabled: false`` is refused; left at its default, it is off then."""
    session_lifetime: float = Field(default=8 * 3600.0, gt=0, le=7 * 86400)
    """A console session ends this long after sign-in, whatever happens."""
    idle_timeout: float = Field(default=3600.0, gt=0, le=7 * 86400)
    """...and earlier when it is not used for this long."""
    sign_in_attempts: int = Field(default=10, ge=1)
    """Sign-ins (with a key, or OIDC starts) one address may try per minute; more wait for
    the minute to end (429). Failed ones also count against ``auth.brute_force``."""
    oidc: ConsoleOidcSettings | None = None


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    format: Literal["text", "json"] = "text"


class Settings(_Model):
    server: ServerSettings = ServerSettings()
    http: HttpSettings = HttpSettings()
    upstream: UpstreamClientSettings = UpstreamClientSettings()
    models: tuple[ModelSettings, ...] = ()
    engine: EngineSettings = EngineSettings()
    auth: AuthSettings = AuthSettings()
    roles: dict[str, RoleSettings] = Field(default_factory=dict)
    teams: dict[str, TeamSettings] = Field(default_factory=dict)
    network: NetworkSettings = NetworkSettings()
    routes: RoutesSettings = RoutesSettings()
    fields: FieldsSettings = FieldsSettings()
    store: StoreSettings = StoreSettings()
    limits: LimitsSettings = LimitsSettings()
    usage: UsageSettings = UsageSettings()
    responses: ResponsesSettings = ResponsesSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    console: ConsoleSettings = ConsoleSettings()

    @model_validator(mode="after")
    def _unique_models(self) -> Settings:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model {model.name!r} is declared twice")
            seen.add(model.name)
        return self

    @model_validator(mode="after")
    def _client_certificates_need_a_client_ca(self) -> Settings:
        tls = self.server.tls
        if self.auth.client_certificate is not None and (tls is None or tls.client_ca is None):
            raise ValueError(
                "auth.client_certificate needs server.tls.client_ca (the CA that signs the "
                "client certificates): without it no client certificate is verified"
            )
        return self

    @model_validator(mode="after")
    def _priced_for_cost_budgets(self) -> Settings:
        if not self.limits.cost_budgets:
            return self
        prices = self.usage.prices
        if "*" in prices:
            return self
        served = [m.name for m in self.models] or (
            [self.engine.served_name] if self.uses_engine else []
        )
        unpriced = [name for name in served if name not in prices]
        if unpriced:
            raise ValueError(
                "limits has cost budgets, but usage.prices has no price for "
                f"{', '.join(repr(n) for n in unpriced)} (give one, or a '*' price)"
            )
        return self

    @model_validator(mode="after")
    def _exact_limits_across_workers(self) -> Settings:
        problem = self.workers_problem
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _console_needs_the_store(self) -> Settings:
        console = self.console
        if not self.store.enabled and console.enabled and "enabled" in console.model_fields_set:
            raise ValueError(
                "console.enabled needs the store (its sessions and the admin API live there); "
                "with store.enabled: false the console is off"
            )
        oidc = console.oidc
        if oidc is not None and oidc.issuer is None and self.auth.jwt is None:
            raise ValueError(
                "console.oidc needs an identity provider: configure auth.jwt, or give "
                "console.oidc.issuer"
            )
        return self

    @property
    def console_on(self) -> bool:
        """Whether the gateway serves the console (asked for, and a store to keep sessions)."""
        return self.console.enabled and self.store.enabled

    @property
    def workers_problem(self) -> str | None:
        """Why these settings cannot run on ``server.workers`` processes (None: they can).

        Limits kept in memory are each worker's own: N workers would admit up to N times
        every limit, so limits with several workers need the shared Redis backend."""
        workers = self.server.workers
        if workers == 1 or self.limits.backend != "memory" or not self.limits.configured:
            return None
        return (
            f"limits are configured with limits.backend: memory and server.workers: {workers}; "
            f"each worker would count on its own and admit up to {workers} times every limit. "
            "Use limits.backend: redis (shared by the workers, exact), or server.workers: 1"
        )

    @property
    def uses_engine(self) -> bool:
        """True when Bastion must start a model server itself."""
        return not self.models and self.engine.kind != "none"

    def state_path(self) -> Path:
        return self.server.state_dir or default_state_dir()


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "bastion"


_MESSAGES = {
    "extra_forbidden": "unknown setting",
    "tuple_type": "should be a list",
    "dict_type": "should be a mapping",
    "model_type": "should be a mapping",
}
"""Pydantic's words for what a YAML file (or a JSON value) calls otherwise."""


def _describe(error: ValidationError, origin: Callable[[tuple[int | str, ...]], str] | None) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = _MESSAGES.get(item["type"], item["msg"])
        if item["type"] == "model_type" and item.get("ctx", {}).get("class_name") == "Secret":
            message = "should be a secret: {env: NAME}, {file: PATH} or {value: ...}"
        line = f"{where}: {message}"
        lines.append(line if origin is None else f"{origin(item['loc'])}: {line}")
    return "; ".join(lines)


def parse_settings(
    data: Any,
    source: str = "config",
    *,
    origin: Callable[[tuple[int | str, ...]], str] | None = None,
) -> Settings:
    """Validate a mapping (as read from YAML) into :class:`Settings`.

    An error names ``source``, or, with ``origin``, what ``origin`` says of each bad
    setting's location (``bastion.yaml:12``, ``BASTION_SERVER__PORT``); ``bastion.sources``
    reads the file and the environment."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        described = _describe(exc, origin)
        raise ConfigError(described if origin else f"{source}: {described}") from None
