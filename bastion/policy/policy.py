"""The compiled access policy: roles, network rules, and each principal's effective access."""

from __future__ import annotations

from bastion.auth.identity import Identity, Restrictions
from bastion.errors import ConfigError
from bastion.policy.networks import Address, NetworkList, client_address
from bastion.policy.roles import Access, RoleBook, expand_permissions
from bastion.settings import Settings

__all__ = ["Policy"]

_UNSEEN = object()


class Policy:
    """Built once from settings (a bad role, permission or CIDR is a ConfigError naming it)."""

    def __init__(self, settings: Settings) -> None:
        self.roles = RoleBook(settings.roles)
        network = settings.network
        self._allow = NetworkList(network.allow, "network.allow")
        self._deny = NetworkList(network.deny, "network.deny")
        self._trusted = NetworkList(network.trusted_proxies, "network.trusted_proxies")
        self._narrowed: dict[tuple[str, Restrictions], Access | None] = {}
        self._peers: dict[str, Address | None] = {}
        self._teams = {
            name: (
                team.models,
                NetworkList(team.networks, f"teams.{name}.networks")
                if team.networks is not None
                else None,
            )
            for name, team in settings.teams.items()
            if team.models is not None or team.networks is not None
        }
        self._with_teams: dict[tuple[Access, tuple[str, ...]], Access] = {}
        self._check_references(settings)

    def _check_references(self, settings: Settings) -> None:
        for index, key in enumerate(settings.auth.api_keys):
            where = f"auth.api_keys.{index}"
            self._check_role(key.role, f"{where}.role")
            if key.routes is not None:
                expand_permissions(key.routes, f"{where}.routes")
            if key.networks is not None:
                NetworkList(key.networks, f"{where}.networks")
        if settings.auth.htpasswd is not None:
            self._check_role(settings.auth.htpasswd.role, "auth.htpasswd.role")
        if settings.auth.client_certificate is not None:
            self._check_role(settings.auth.client_certificate.role, "auth.client_certificate.role")

    def _check_role(self, role: str, key: str) -> None:
        if role not in self.roles:
            raise ConfigError(f"unknown role {role!r}", key)

    def address(self, peer: str | None, forwarded_for: bytes | None) -> Address | None:
        """The caller's address, believing X-Forwarded-For only from trusted proxies."""
        if forwarded_for is not None and self._trusted:
            return client_address(peer, forwarded_for, self._trusted)
        if peer is None:
            return None
        found = self._peers.get(peer, _UNSEEN)
        if found is _UNSEEN:  # parsing an address costs more than the rest of this phase
            if len(self._peers) >= 4096:
                self._peers.clear()
            found = self._peers[peer] = client_address(peer, None, self._trusted)
        return found  # type: ignore[return-value]

    def admits(self, address: Address | None) -> bool:
        """The gateway-wide network rule, applied before authentication."""
        if self._allow and address not in self._allow:
            return False
        return not (self._deny and address in self._deny)

    def access(self, identity: Identity) -> Access | None:
        """The identity's effective access; None when its role is unknown (deny)."""
        found = self._credential_access(identity)
        if found is None or not self._teams or not identity.teams:
            return found
        key = (found, identity.teams)
        narrowed = self._with_teams.get(key)
        if narrowed is None:
            narrowed = found
            for team in identity.teams:
                rule = self._teams.get(team)
                if rule is not None:
                    narrowed = narrowed.narrowed(None, rule[0], rule[1])
            if len(self._with_teams) >= 10_000:  # bounded whatever the tokens' claims say
                self._with_teams.clear()
            self._with_teams[key] = narrowed
        return narrowed

    def _credential_access(self, identity: Identity) -> Access | None:
        base = self.roles.access(identity.role)
        restrictions = identity.restrictions
        if base is None or restrictions is None:
            return base
        key = (identity.role, restrictions)
        found = self._narrowed.get(key, _UNSEEN)  # one lookup: hashing restrictions costs
        if found is _UNSEEN:
            found = self._narrowed[key] = _narrowed(base, restrictions)
        return found  # type: ignore[return-value]


def _narrowed(base: Access, restrictions: Restrictions) -> Access | None:
    """``base`` narrowed by a credential's restrictions; None (nothing granted) when they
    are malformed."""
    try:
        return base.narrowed(
            expand_permissions(restrictions.routes, "restrictions.routes")
            if restrictions.routes is not None
            else None,
            restrictions.models,
            NetworkList(restrictions.networks, "restrictions.networks")
            if restrictions.networks is not None
            else None,
        )
    except ConfigError:
        return None
