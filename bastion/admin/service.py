"""Administrative operations, with their rules: the one layer the admin API and CLI share.

The rule that matters: no operation gives anyone more than the caller has. A caller may only
hand out a role, or create, rotate or revoke a key, whose effective access lies within its own
(its role narrowed by the credential it is using); it may not change its own role, disable or
delete itself, or manage a user more powerful than itself. A refused operation is itself
recorded in the audit trail (outcome ``denied``).

The local operator (``bastion users ...`` on the store's own database, no gateway involved)
is unrestricted: whoever can write the database needs no permission from it.

Methods are blocking; the admin API runs them in a worker thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bastion.auth.identity import Identity, Restrictions
from bastion.errors import BadRequestError, ConfigError, PermissionDeniedError
from bastion.policy.networks import NetworkList
from bastion.policy.policy import Policy
from bastion.policy.roles import Access, expand_permissions
from bastion.store.records import (
    Actor,
    AuditEvent,
    AuditQuery,
    Principal,
    StoredKey,
    Team,
)
from bastion.store.store import Store
from bastion.store.usage import Prices, UsageLedger, UsageQuery

__all__ = ["MAX_OVERLAP", "AdminService", "Caller"]

MAX_OVERLAP = 30 * 86400.0
_MAX_PATTERNS = 100


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks for an operation, and what they may do (None: the unrestricted local operator)."""

    actor: Actor
    principal: str | None
    access: Access | None

    @classmethod
    def local(cls, name: str) -> Caller:
        return cls(Actor(name=name, credential="cli"), None, None)


class AdminService:
    def __init__(self, store: Store, policy: Policy, prices: Prices | None = None) -> None:
        """``prices`` add a cost to usage reports."""
        self.store = store
        self._policy = policy
        self._ledger = UsageLedger(store)
        self._prices = prices

    # -- users --------------------------------------------------------------------------

    def users(self) -> list[Principal]:
        return self.store.principals()

    def user(self, name: str) -> Principal:
        return self.store.principal(name)

    def create_user(
        self, caller: Caller, name: str, *, role: str, kind: str = "user", description: str = ""
    ) -> Principal:
        self._grantable_role(caller, "user.create", name, role)
        return self.store.create_principal(
            caller.actor, name, role=role, kind=kind, description=description
        )

    def update_user(
        self,
        caller: Caller,
        name: str,
        *,
        role: str | None = None,
        disabled: bool | None = None,
        description: str | None = None,
    ) -> Principal:
        target = self.store.principal(name)
        if caller.principal == name and (role is not None or disabled):
            self._deny(
                caller, "user.update", name, "You cannot change your own role or disable yourself."
            )
        self._manageable(caller, "user.update", target)
        if role is not None:
            self._grantable_role(caller, "user.update", name, role)
        return self.store.update_principal(
            caller.actor, name, role=role, disabled=disabled, description=description
        )

    def delete_user(self, caller: Caller, name: str) -> None:
        target = self.store.principal(name)
        if caller.principal == name:
            self._deny(caller, "user.delete", name, "You cannot delete yourself.")
        self._manageable(caller, "user.delete", target)
        self.store.delete_principal(caller.actor, name)

    # -- teams --------------------------------------------------------------------------

    def teams(self) -> list[Team]:
        return self.store.teams()

    def team(self, name: str) -> Team:
        return self.store.team(name)

    def create_team(self, caller: Caller, name: str, *, description: str = "") -> Team:
        return self.store.create_team(caller.actor, name, description=description)

    def delete_team(self, caller: Caller, name: str) -> None:
        self.store.delete_team(caller.actor, name)

    def add_member(self, caller: Caller, team: str, user: str) -> Team:
        self._manageable(caller, "team.add_member", self.store.principal(user))
        return self.store.add_member(caller.actor, team, user)

    def remove_member(self, caller: Caller, team: str, user: str) -> Team:
        self._manageable(caller, "team.remove_member", self.store.principal(user))
        return self.store.remove_member(caller.actor, team, user)

    # -- roles ----------------------------------------------------------------------------

    def roles(self) -> list[dict[str, Any]]:
        return self._policy.roles.describe()

    # -- keys -----------------------------------------------------------------------------

    def keys(self, owner: str | None = None, *, include_revoked: bool = False) -> list[StoredKey]:
        return self.store.keys(owner, include_revoked=include_revoked)

    def key(self, key_id: str) -> StoredKey:
        return self.store.key(key_id)

    def create_key(
        self,
        caller: Caller,
        owner: str,
        *,
        name: str = "default",
        models: Sequence[str] | None = None,
        routes: Sequence[str] | None = None,
        networks: Sequence[str] | None = None,
        expires_at: float | None = None,
    ) -> tuple[StoredKey, str]:
        restrictions = _restrictions(models, routes, networks)
        if expires_at is not None and not (time.time() < expires_at < math.inf):
            raise BadRequestError("expires_at must be a moment in the future", param="expires_at")
        principal = self.store.principal(owner)
        self._key_within(caller, "key.create", principal, restrictions)
        created = self.store.create_key(
            caller.actor,
            owner,
            name=name,
            models=restrictions.models,
            routes=restrictions.routes,
            networks=restrictions.networks,
            expires_at=expires_at,
        )
        return created

    def revoke_key(self, caller: Caller, key_id: str) -> StoredKey:
        found = self.store.key(key_id)
        self._key_within(caller, "key.revoke", self.store.principal(found.principal), _of(found))
        return self.store.revoke_key(caller.actor, key_id)

    def rotate_key(self, caller: Caller, key_id: str, *, overlap: float) -> tuple[StoredKey, str]:
        if not 0 <= overlap <= MAX_OVERLAP:
            raise BadRequestError("overlap is 0 to 30 days, in seconds", param="overlap")
        found = self.store.key(key_id)
        self._key_within(caller, "key.rotate", self.store.principal(found.principal), _of(found))
        return self.store.rotate_key(caller.actor, key_id, overlap=overlap)

    # -- audit ----------------------------------------------------------------------------

    def audit(self, query: AuditQuery) -> list[AuditEvent]:
        return self.store.audit(query)

    # -- usage ----------------------------------------------------------------------------

    def usage(self, query: UsageQuery) -> list[dict[str, Any]]:
        return self._ledger.report(query, self._prices)

    # -- rules ----------------------------------------------------------------------------

    # -- configuration ------------------------------------------------------------------

    def may_reload(self, caller: Caller) -> None:
        """Reloading the configuration changes everyone's access: only a caller with at
        least the built-in ``admin`` role's access may."""
        admin = self._policy.roles.access("admin")
        if caller.access is not None and (admin is None or not admin.within(caller.access)):
            self._deny(caller, "config.reload", "config", "Only a full administrator may reload.")

    def record(
        self, caller: Caller, action: str, target: str, outcome: str, status: int, **detail: Any
    ) -> None:
        """Write one event about an operation done outside the store (a reload, a refusal)."""
        actor = caller.actor
        self.store.append_audit(
            [
                AuditEvent(
                    at=time.time(),
                    actor=actor.name,
                    action=action,
                    target=target,
                    outcome=outcome,
                    status=status,
                    credential=actor.credential,
                    address=actor.address,
                    request_id=actor.request_id,
                    detail=detail or None,
                )
            ]
        )

    def _grantable_role(self, caller: Caller, action: str, target: str, role: str) -> None:
        access = self._policy.roles.access(role)
        if access is None:
            raise BadRequestError(f"unknown role {role!r}", param="role")
        if caller.access is not None and not access.within(caller.access):
            self._deny(caller, action, target, "You cannot give a role wider than your own access.")

    def _manageable(self, caller: Caller, action: str, target: Principal) -> None:
        if caller.access is None or caller.principal == target.name:
            return
        access = self._policy.roles.access(target.role)
        if access is None or not access.within(caller.access):
            self._deny(
                caller, action, target.name, "You cannot manage a user with more access than yours."
            )

    def _key_within(
        self, caller: Caller, action: str, owner: Principal, restrictions: Restrictions
    ) -> None:
        if caller.access is None:
            return
        identity = Identity(
            principal=owner.name,
            role=owner.role,
            credential_id="-",
            method="api_key",
            restrictions=Restrictions.of(
                restrictions.routes, restrictions.models, restrictions.networks
            ),
        )
        access = self._policy.access(identity)
        if access is None or not access.within(caller.access):
            self._deny(
                caller, action, owner.name, "That key would allow more than your own access."
            )

    def _deny(self, caller: Caller, action: str, target: str, message: str) -> None:
        self.record(caller, action, target, "denied", 403, reason=message)
        error = PermissionDeniedError(message)
        error.audited = True  # the line above is the record; the request log need not repeat it
        raise error


def _of(key: StoredKey) -> Restrictions:
    return Restrictions(key.routes, key.models, key.networks)


def _restrictions(
    models: Sequence[str] | None, routes: Sequence[str] | None, networks: Sequence[str] | None
) -> Restrictions:
    """Validate a key's restrictions (lists of strings; known permissions; real networks)."""
    for param, values in (("models", models), ("routes", routes), ("networks", networks)):
        if values is None:
            continue
        if (
            not isinstance(values, list | tuple)
            or len(values) > _MAX_PATTERNS
            or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in values)
        ):
            raise BadRequestError(
                f"{param} must be a list of up to {_MAX_PATTERNS} strings", param=param
            )
    try:
        if routes is not None:
            expand_permissions(routes, "routes")
        if networks is not None:
            NetworkList(networks, "networks")
    except ConfigError as exc:
        raise BadRequestError(str(exc)) from None
    return Restrictions(
        tuple(routes) if routes is not None else None,
        tuple(models) if models is not None else None,
        tuple(networks) if networks is not None else None,
    )
