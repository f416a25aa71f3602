"""The shapes of the admin API's answers, one ``TypedDict`` each.

Each operation of :data:`bastion.admin.api.OPERATIONS` names the shape it answers with; these
are what an OpenAPI description of the API shows (pydantic's ``TypeAdapter`` turns a
``TypedDict`` into JSON Schema), and a test checks every operation's real answer against its
shape. Times are Unix times in seconds.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, NotRequired, TypeVar

from typing_extensions import TypedDict  # what pydantic needs before Python 3.12

__all__ = [
    "AuditEvent",
    "Deleted",
    "IssuedKey",
    "Key",
    "ListOf",
    "Reloaded",
    "Role",
    "Team",
    "UsageRow",
    "User",
    "Whoami",
]

T = TypeVar("T")


class ListOf(TypedDict, Generic[T]):
    object: Literal["list"]
    data: list[T]


class Whoami(TypedDict):
    principal: str | None
    credential: str


class Role(TypedDict):
    name: str
    builtin: bool
    routes: list[str]
    models: list[str]
    networks: list[str] | None


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


class Team(TypedDict):
    id: str
    name: str
    description: str
    members: list[str]
    created_at: float
    created_by: str


class Deleted(TypedDict):
    name: str
    deleted: Literal[True]


class Key(TypedDict):
    """A key as lists show it: never the key itself, only its first characters."""

    id: str
    user: str
    name: str
    prefix: str
    state: Literal["active", "expired", "revoked"]
    models: list[str] | None
    routes: list[str] | None
    networks: list[str] | None
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    rotated_from: str | None


class IssuedKey(TypedDict):
    """A key just created or rotated: ``secret`` is shown this once."""

    key: Key
    secret: str


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


class UsageRow(TypedDict):
    """One row of a usage report: the groups asked for (``by``), then the totals; the cost
    columns only when prices are configured."""

    period: NotRequired[int]
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


class Reloaded(TypedDict):
    status: Literal["reloaded"]
    source: str
    models: list[str]
    restart_required: list[str]
