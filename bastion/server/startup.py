"""What a gateway loads before it listens: the identity store and the keys it starts with.

A gateway never runs open. With no credential configured at all (no config keys, htpasswd or
JWT), the first start creates an administrator: in the store, a user ``admin`` with one key;
without a store, a key whose hash is kept in the state directory. The key is printed once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bastion.auth.apikeys import ApiKeyRecord
from bastion.auth.identity import Restrictions
from bastion.errors import ConflictError
from bastion.settings import Settings
from bastion.state import StateDir
from bastion.store.records import Actor
from bastion.store.store import Store, database_url

__all__ = ["Welcome", "config_keys", "open_store", "startup_keys"]

log = logging.getLogger("bastion")

_BOOTSTRAP = Actor(name="bastion", credential="bootstrap")


@dataclass(frozen=True, slots=True)
class Welcome:
    """What to tell the operator at start-up about the administrator key."""

    new_key: str | None
    """The plaintext key, only on the start that created it."""
    kept_in: str
    recover: str
    """How to get a new key if this one is lost."""


def open_store(settings: Settings, state: StateDir) -> Store:
    url = database_url(settings.store, state.path)
    if url.startswith("sqlite"):
        state.ensure()
    store = Store.open(url, settings.store)
    log.info("identity store: %s", store.describe())
    return store


def config_keys(settings: Settings) -> list[ApiKeyRecord]:
    """The keys declared in the config file (hashes only)."""
    _warn_about_expiry(settings)
    return [
        ApiKeyRecord(
            e.name,
            e.hash,
            e.role,
            Restrictions.of(e.routes, e.models, e.networks),
            e.expires.timestamp() if e.expires is not None else None,
        )
        for e in settings.auth.api_keys
    ]


def startup_keys(
    settings: Settings, state: StateDir, store: Store | None
) -> tuple[list[ApiKeyRecord], Welcome | None]:
    """The config's keys, and, when nothing else lets anyone in, the bootstrap administrator."""
    records = config_keys(settings)
    auth = settings.auth
    if records or auth.htpasswd is not None or auth.jwt is not None:
        return records, None
    if store is None:
        bootstrap = state.admin_key()
        welcome = Welcome(
            bootstrap.new_key, str(state.path), "Remove that file to issue a new one."
        )
        return [bootstrap.record], welcome
    recover = "Make another with: bastion keys create --user admin"
    if not store.is_empty():
        return records, Welcome(None, "the identity store", recover)
    try:
        store.create_principal(_BOOTSTRAP, "admin", role="admin", description="first administrator")
    except ConflictError:  # another replica bootstrapped at the same moment
        return records, Welcome(None, "the identity store", recover)
    _, key = store.create_key(_BOOTSTRAP, "admin", name="bootstrap")
    return records, Welcome(key, "the identity store", recover)


def _warn_about_expiry(settings: Settings) -> None:
    now = time.time()
    for entry in settings.auth.api_keys:
        if entry.expires is None:
            continue
        left = entry.expires.timestamp() - now
        if left <= 0:
            log.warning("API key %r expired at %s; it is refused", entry.name, entry.expires)
        elif left < 7 * 86400:
            log.warning("API key %r expires at %s", entry.name, entry.expires)
