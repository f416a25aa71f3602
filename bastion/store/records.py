"""What the store holds, as plain frozen values (no database types leak past the store)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "Actor",
    "AuditEvent",
    "AuditQuery",
    "KeyGrant",
    "Principal",
    "Snapshot",
    "StoredKey",
    "Team",
]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs an administrative operation, as the audit trail names them."""

    name: str
    credential: str = "-"
    """Non-secret id of the credential used (a key id, ``cli``); never the credential."""
    address: str = "-"
    request_id: str = "-"


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    name: str
    kind: str
    """``user`` (a person) or ``service`` (a service account)."""
    role: str
    description: str
    disabled: bool
    created_at: float
    updated_at: float
    created_by: str
    teams: tuple[str, ...] = ()

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "role": self.role,
            "description": self.description,
            "disabled": self.disabled,
            "teams": list(self.teams),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "created_by": self.created_by,
        }


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    name: str
    description: str
    created_at: float
    created_by: str
    members: tuple[str, ...] = ()

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "members": list(self.members),
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An API key as the store keeps it: its digest, never the key."""

    id: str
    principal: str
    """The owner's name."""
    name: str
    prefix: str
    """The key's first characters (``bst_Ab3d``): enough to recognise it, useless to use it."""
    models: tuple[str, ...] | None
    routes: tuple[str, ...] | None
    networks: tuple[str, ...] | None
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    rotated_from: str | None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def public(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.principal,
            "name": self.name,
            "prefix": self.prefix,
            "state": self.state(now),
            "models": None if self.models is None else list(self.models),
            "routes": None if self.routes is None else list(self.routes),
            "networks": None if self.networks is None else list(self.networks),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
            "rotated_from": self.rotated_from,
        }


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """A usable key, as the gateway's cache needs it (one row of a :class:`Snapshot`)."""

    id: str
    digest: bytes
    principal: str
    kind: str
    role: str
    teams: tuple[str, ...]
    models: tuple[str, ...] | None
    routes: tuple[str, ...] | None
    networks: tuple[str, ...] | None
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every usable key at one revision of the store."""

    revision: int
    keys: tuple[KeyGrant, ...]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One line of the audit trail. ``detail`` never holds a secret or prompt text."""

    at: float
    actor: str
    action: str
    """``user.create``, ``key.revoke``, ``request.refused``..."""
    target: str
    outcome: str
    """``ok``, ``denied`` or ``failed``."""
    status: int = 0
    credential: str = "-"
    address: str = "-"
    request_id: str = "-"
    detail: dict[str, Any] | None = None
    id: int | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "credential": self.credential,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "status": self.status,
            "address": self.address,
            "request_id": self.request_id,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class AuditQuery:
    since: float | None = None
    until: float | None = None
    actor: str | None = None
    action: str | None = None
    """An action, or a prefix ending in ``.`` (``key.``)."""
    outcome: str | None = None
    limit: int = 100
