"""The shapes of the admin API's answers, one ``TypedDict`` each.

Each operation of :data:`bastion.admin.api.OPERATIONS` names the shape it answers with; these
are the schemas of the OpenAPI document (:mod:`bastion.admin.openapi`: pydantic's
``TypeAdapter`` turns a ``TypedDict`` into JSON Schema), and tests check every operation's real
answers against them. Every shape is closed: an answer has exactly the fields named here
(``NotRequired`` ones may be absent). Times are Unix times in seconds.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, NotRequired, TypeVar

from pydantic import ConfigDict, with_config
from typing_extensions import TypedDict  # what pydantic needs before Python 3.12

__all__ = [
    "AuditEvent",
    "Deleted",
    "Error",
    "ErrorDetail",
    "IssuedKey",
    "Key",
    "LimitBucket",
    "LimitUse",
    "LimitValues",
    "Limits",
    "ListOf",
    "ModelUpstreams",
    "OpenApiDocument",
    "Reloaded",
    "Role",
    "Team",
    "UpstreamState",
    "UsageRow",
    "User",
    "Whoami",
]

T = TypeVar("T")
_CLOSED = ConfigDict(extra="forbid", use_attribute_docstrings=True)


@with_config(_CLOSED)
class ListOf(TypedDict, Generic[T]):
    object: Literal["list"]
    data: list[T]


@with_config(_CLOSED)
class Whoami(TypedDict):
    principal: str | None
    """None only for the local operator (the CLI on the store itself)."""
    credential: str
    """The id of the credential in use (a key's id, ``cli`` for the local operator)."""


@with_config(_CLOSED)
class Role(TypedDict):
    name: str
    builtin: bool
    routes: list[str]
    models: list[str]
    networks: list[str] | None
    """None: from any network."""


@with_config(_CLOSED)
class User(TypedDict):
    id: str
    name: str
    kind: Literal["user", "service"]
    role: str
    description: str
    disabled: bool
    teams: list[str]
    created_at: float
    updated_at: float
    created_by: str


@with_config(_CLOSED)
class Team(TypedDict):
    id: str
    name: str
    description: str
    members: list[str]
    created_at: float
    created_by: str


@with_config(_CLOSED)
class Deleted(TypedDict):
    name: str
    deleted: Literal[True]


@with_config(_CLOSED)
class Key(TypedDict):
    """A key as lists show it: never the key itself, only its first characters."""

    id: str
    user: str
    name: str
    prefix: str
    """The key's first characters (``bst_Ab3d``), to recognise it."""
    state: Literal["active", "expired", "revoked"]
    models: list[str] | None
    """The key is limited to these models (None: its owner's)."""
    routes: list[str] | None
    """The key is limited to these permissions (None: its owner's)."""
    networks: list[str] | None
    """The key is limited to these networks (None: its owner's)."""
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    rotated_from: str | None
    """The id of the key this one replaced (``keys.rotate``)."""


@with_config(_CLOSED)
class IssuedKey(TypedDict):
    """A key just created or rotated: ``secret`` is shown this once."""

    key: Key
    secret: str


@with_config(_CLOSED)
class AuditEvent(TypedDict):
    id: int
    at: float
    actor: str
    credential: str
    action: str
    target: str
    outcome: Literal["ok", "denied", "failed"]
    status: int
    address: str
    request_id: str
    detail: dict[str, Any] | None


@with_config(_CLOSED)
class UsageRow(TypedDict):
    """One row of a usage report: the groups asked for (``by``), then the totals; the cost
    columns only when prices are configured."""

    period: NotRequired[int]
    """The start of the hour or day (absent for ``period=all``)."""
    user: NotRequired[str]
    key: NotRequired[str]
    team: NotRequired[str]
    model: NotRequired[str]
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    mean_latency_ms: float
    cost: NotRequired[float]
    currency: NotRequired[str]
    unpriced_tokens: NotRequired[int]


@with_config(_CLOSED)
class Reloaded(TypedDict):
    status: Literal["reloaded"]
    source: str
    models: list[str]
    restart_required: list[str]


@with_config(_CLOSED)
class ErrorDetail(TypedDict):
    message: str
    type: str
    """``invalid_request_error``, ``authentication_error``, ``permission_error``,
    ``rate_limit_error`` or ``server_error``."""
    param: str | None
    """The parameter that was refused, if one was."""
    code: str | None


@with_config(_CLOSED)
class Error(TypedDict):
    """Every refusal, in the OpenAI error shape (``bastion.pipeline.responses``)."""

    error: ErrorDetail


@with_config(_CLOSED)
class OpenApiDocument(TypedDict):
    """The admin API's OpenAPI 3.1 document (``GET /admin/v1/openapi.json``)."""

    openapi: str
    jsonSchemaDialect: str
    info: dict[str, Any]
    tags: list[dict[str, Any]]
    paths: dict[str, Any]
    components: dict[str, Any]
    security: list[dict[str, list[str]]]


@with_config(_CLOSED)
class UpstreamState(TypedDict):
    """One upstream of a model, as this gateway process sees it now."""

    name: str
    """``host:port`` (never a credential)."""
    weight: int
    available: bool
    """It would be given a request now (healthy, and not ejected)."""
    healthy: bool
    """What active health checks say (true until one fails)."""
    checked: bool
    """An active health check has answered at least once."""
    ejected: bool
    """Taken out for failing requests (passive ejection)."""
    outstanding: int
    """Requests in flight."""
    requests: int
    """Requests sent since the process started."""
    errors: int


@with_config(_CLOSED)
class ModelUpstreams(TypedDict):
    model: str
    healthy: int
    """Upstreams that can take a request now (with health checks on: once checked)."""
    total: int
    upstreams: list[UpstreamState]


@with_config(_CLOSED)
class LimitValues(TypedDict):
    """The limits of one bucket (those it sets; see docs/limits.md)."""

    count: Literal["total", "prompt", "completion"]
    requests_per_minute: NotRequired[int]
    burst: NotRequired[int]
    tokens_per_minute: NotRequired[int]
    concurrency: NotRequired[int]
    tokens_per_day: NotRequired[int]
    tokens_per_month: NotRequired[int]
    cost_per_day: NotRequired[float]
    cost_per_month: NotRequired[float]


@with_config(_CLOSED)
class LimitBucket(TypedDict):
    scope: Literal[
        "per_key", "per_user", "per_team", "per_model", "all",
        "keys", "users", "roles", "teams", "models",
    ]  # fmt: skip
    """The ``limits`` setting it comes from."""
    name: str | None
    """The key, user, role, team or model it names (None for ``per_*`` and ``all``)."""
    limits: LimitValues


@with_config(_CLOSED)
class LimitUse(TypedDict):
    """How much of one budget a key, user, team or model has used (UTC day or month)."""

    bucket: Literal["key", "user", "team", "model"]
    name: str
    budget: Literal["tokens_per_day", "tokens_per_month", "cost_per_day", "cost_per_month"]
    used: float
    """Tokens, or cost in ``currency``, from the usage rollups (a little behind)."""
    limit: float
    fraction: float
    """``used / limit``: 1 or more is exhausted."""


@with_config(_CLOSED)
class Limits(TypedDict):
    backend: Literal["memory", "redis"]
    currency: str
    buckets: list[LimitBucket]
    nearest: list[LimitUse]
    """The buckets nearest to a budget, nearest first (at most 50)."""
