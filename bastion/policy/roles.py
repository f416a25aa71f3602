"""Roles and what they allow: route permissions, model patterns, networks.

A principal's effective permissions are its role's, narrowed (never widened) by what its
credential restricts: see :class:`Access` and docs/permissions.md.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion.errors import ConfigError
from bastion.policy.networks import Address, NetworkList
from bastion.settings import RoleSettings

__all__ = [
    "BUILTIN_ROLES",
    "GROUPS",
    "PERMISSIONS",
    "Access",
    "RoleBook",
    "expand_permissions",
]

INFERENCE = frozenset(
    {
        "chat",
        "completions",
        "embeddings",
        "responses",
        "audio",
        "tokenize",
        "pooling",
        "classify",
        "score",
        "rerank",
        "invocations",
        "decisions",
    }
)
PERMISSIONS = INFERENCE | {"models", "control", "admin", "metrics", "console"}
GROUPS: dict[str, frozenset[str]] = {"inference": INFERENCE, "*": frozenset(PERMISSIONS)}

BUILTIN_ROLES: dict[str, RoleSettings] = {
    "admin": RoleSettings(routes=("*",)),
    "operator": RoleSettings(routes=("inference", "models", "control")),
    "user": RoleSettings(routes=("inference", "models")),
    "viewer": RoleSettings(routes=("models",)),
    "console-viewer": RoleSettings(routes=("models", "console")),
}


def expand_permissions(names: Iterable[str], key: str) -> frozenset[str]:
    """Permission names and groups to the set of permissions; unknown names are an error."""
    found: set[str] = set()
    for index, name in enumerate(names):
        if name in GROUPS:
            found |= GROUPS[name]
        elif name in PERMISSIONS:
            found.add(name)
        else:
            known = ", ".join(sorted(PERMISSIONS | GROUPS.keys()))
            raise ConfigError(f"unknown permission {name!r} (known: {known})", f"{key}.{index}")
    return frozenset(found)


@dataclass(frozen=True, eq=False)
class Access:
    """What one principal may do. Built once per role and credential restriction, then reused.

    Narrowing adds constraints, never removes them: a model must match a pattern of *every*
    model list, the address must be in *every* network list, and the routes are intersected.
    """

    routes: frozenset[str]
    models: tuple[tuple[str, ...], ...]
    networks: tuple[NetworkList, ...] = ()
    _model_answers: dict[str, bool] = field(default_factory=dict, repr=False)

    def allows_route(self, permission: str) -> bool:
        return permission in self.routes

    def allows_model(self, name: str) -> bool:
        known = self._model_answers.get(name)
        if known is None:
            known = all(
                any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
                for patterns in self.models
            )
            if len(self._model_answers) < 10_000:  # the configured models, in practice
                self._model_answers[name] = known
        return known

    def allows_address(self, address: Address | None) -> bool:
        return all(address is not None and address in n for n in self.networks)

    def within(self, other: Access) -> bool:
        """True when this access allows nothing that ``other`` does not (conservative: when
        it cannot tell, it answers False).

        Every constraint of ``other`` must be matched by one of this access at least as
        narrow: routes are a subset; for each model list of ``other``, one model list here
        whose every pattern is covered; for each network list of ``other``, one network
        list here whose every network lies inside it.
        """
        if not self.routes <= other.routes:
            return False
        for patterns in other.models:
            if not any(_patterns_covered(mine, patterns) for mine in self.models):
                return False
        return all(any(theirs.covers(mine) for mine in self.networks) for theirs in other.networks)

    def narrowed(
        self,
        routes: frozenset[str] | None,
        models: tuple[str, ...] | None,
        networks: NetworkList | None,
    ) -> Access:
        """This access, narrowed by a credential's restrictions."""
        return Access(
            routes=self.routes & routes if routes is not None else self.routes,
            models=self.models + ((models,) if models is not None else ()),
            networks=self.networks + ((networks,) if networks is not None else ()),
        )


def _patterns_covered(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    """Every name matching a pattern of ``inner`` surely matches one of ``outer``."""
    return all(any(_pattern_covered(i, o) for o in outer) for i in inner)


def _pattern_covered(inner: str, outer: str) -> bool:
    if outer == "*" or inner == outer:
        return True
    if not _has_glob(inner):  # a plain name: the pattern decides
        return fnmatch.fnmatchcase(inner, outer)
    # A pattern inside another: only the sure case of a plain prefix followed by '*'.
    return outer.endswith("*") and not _has_glob(outer[:-1]) and inner.startswith(outer[:-1])


def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class RoleBook:
    """The built-in roles and the configured ones, compiled."""

    def __init__(self, custom: Mapping[str, RoleSettings]) -> None:
        clash = sorted(set(custom) & set(BUILTIN_ROLES))
        if clash:
            raise ConfigError(f"{', '.join(clash)}: a built-in role cannot be redefined", "roles")
        self._roles: dict[str, Access] = {}
        self._settings = {**BUILTIN_ROLES, **custom}
        for name, role in self._settings.items():
            key = f"roles.{name}"
            networks = (NetworkList(role.networks, f"{key}.networks"),) if role.networks else ()
            self._roles[name] = Access(
                routes=expand_permissions(role.routes, f"{key}.routes"),
                models=(role.models,),
                networks=networks,
            )

    def __contains__(self, name: object) -> bool:
        return name in self._roles

    def access(self, role: str) -> Access | None:
        return self._roles.get(role)

    def describe(self) -> list[dict[str, Any]]:
        """Every role as configured, for the admin API and CLI."""
        return [
            {
                "name": name,
                "builtin": name in BUILTIN_ROLES,
                "routes": list(role.routes),
                "models": list(role.models),
                "networks": None if role.networks is None else list(role.networks),
            }
            for name, role in sorted(self._settings.items())
        ]
