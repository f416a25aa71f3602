"""Who a request comes from, once a credential has been checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Authenticator", "Identity", "Restrictions"]


@dataclass(frozen=True, slots=True)
class Restrictions:
    """What a credential narrows its holder's role to (None: no narrowing on that axis)."""

    routes: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    networks: tuple[str, ...] | None = None

    @classmethod
    def of(
        cls,
        routes: tuple[str, ...] | None,
        models: tuple[str, ...] | None,
        networks: tuple[str, ...] | None,
    ) -> Restrictions | None:
        """The restrictions a credential declares, or None when it narrows nothing (so that
        the unrestricted majority share their role's access as it is)."""
        if routes is None and models is None and networks is None:
            return None
        return cls(routes, models, networks)


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated principal. Never holds the credential itself."""

    principal: str
    """Stable, non-secret name of the principal (a user, a service account, a key's name)."""
    role: str
    """The principal's role; ``admin`` may reach administrative and control routes."""
    credential_id: str
    """Non-secret id of the credential used (for an API key: its display prefix)."""
    method: str
    """How it authenticated: ``api_key``, ``basic``, ``jwt``, ``client_certificate``."""
    teams: tuple[str, ...] = ()
    """Teams the principal belongs to (from a token's claims, or the identity store)."""
    restrictions: Restrictions | None = None
    """Narrowing carried by the credential itself (an API key limited to some models...)."""


class Authenticator(Protocol):
    """Turns one kind of credential into an :class:`Identity`.

    ``authenticate`` gets the ``Authorization`` header's scheme (lower-cased) and its
    parameter. It returns ``None`` when the credential is not of its kind (the next
    authenticator is asked), an :class:`Identity` when it is valid, and raises
    :class:`bastion.errors.AuthenticationError` when it is of its kind but not valid.
    """

    async def authenticate(self, scheme: bytes, credential: bytes) -> Identity | None: ...
