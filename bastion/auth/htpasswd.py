"""HTTP Basic against an Apache htpasswd file: bcrypt, ``$apr1$`` and ``{SHA}`` entries.

nginx's ``auth_basic`` pays for bcrypt on every request (about 1.5 ms of CPU at cost 5). Here a
successful check is remembered for ``cache_ttl`` seconds under a keyed hash of the whole
credential (user and password, never a prefix of either), so the hash is paid once, not per
request. The file is re-read when it changes; a malformed line is reported by its number and
skipped, and never disables authentication. Slow hashes are checked in a worker thread, so a
bcrypt check does not stall the streams the event loop is relaying.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

import bcrypt

from bastion.auth.identity import Identity
from bastion.auth.md5crypt import apr1
from bastion.errors import AuthenticationError, ConfigError
from bastion.settings import HtpasswdSettings

__all__ = ["HashKind", "HtpasswdAuthenticator", "hash_kind", "parse_htpasswd"]

log = logging.getLogger("bastion.auth")

_BCRYPT_MAX = 72  # bcrypt only reads this many bytes of a password
# Checked when the user is unknown, so that answering "no such user" takes as long as
# answering "wrong password" (cost 5, the usual cost of htpasswd -B files).
_DUMMY_BCRYPT = b"$2b$05$jPo2KZqCqRUIA6uGBAg56u7cwBPIsDJun2OUgVt8WOTkDXnhkrRh."


class HashKind(StrEnum):
    BCRYPT = "bcrypt"
    APR1 = "apr1"
    SHA1 = "sha1"


WEAK = frozenset({HashKind.APR1, HashKind.SHA1})


def hash_kind(stored: bytes) -> HashKind | None:
    """The format of a stored htpasswd hash, or None when Bastion does not support it."""
    if stored[:4] in (b"$2y$", b"$2a$", b"$2b$") and len(stored) == 60:
        return HashKind.BCRYPT
    if stored.startswith(b"$apr1$") and stored.count(b"$") == 3:
        return HashKind.APR1
    if stored.startswith(b"{SHA}") and len(stored) == 33:
        return HashKind.SHA1
    return None


@dataclass(frozen=True, slots=True)
class Entry:
    user: str
    stored: bytes
    kind: HashKind


def parse_htpasswd(text: str) -> tuple[dict[str, Entry], list[str]]:
    """Entries by user name, and the problems found (``line N: reason``, never a hash)."""
    entries: dict[str, Entry] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored:
            problems.append(f"line {number}: not 'user:hash'")
            continue
        kind = hash_kind(stored.encode())
        if kind is None:
            problems.append(f"line {number}: user {user!r} has an unsupported hash format")
            continue
        if user in entries:
            problems.append(f"line {number}: user {user!r} appears again; the first entry counts")
            continue
        entries[user] = Entry(user, stored.encode(), kind)
    return entries, problems


def _check(entry: Entry, password: bytes) -> bool:
    """Compare a password with an entry's hash (slow for bcrypt and apr1)."""
    if entry.kind is HashKind.BCRYPT:
        return bcrypt.checkpw(password, b"$2b$" + entry.stored[4:])
    if entry.kind is HashKind.APR1:
        return hmac.compare_digest(apr1(password, entry.stored), entry.stored)
    digest = base64.b64encode(hashlib.sha1(password, usedforsecurity=False).digest())
    return hmac.compare_digest(b"{SHA}" + digest, entry.stored)


class HtpasswdAuthenticator:
    """Checks ``Authorization: Basic ...`` against an htpasswd file (see the module docstring)."""

    method = "basic"

    def __init__(self, settings: HtpasswdSettings) -> None:
        self._settings = settings
        self._admins = frozenset(settings.admins)
        self._cache: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()
        self._cache_key = os.urandom(32)
        self._entries: dict[str, Entry] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        self.verifications = 0
        """How many passwords were compared with a stored hash (cache misses)."""
        if not self._load():
            raise ConfigError(f"cannot read {settings.file}", "auth.htpasswd.file")

    def __len__(self) -> int:
        return len(self._entries)

    async def authenticate(self, scheme: bytes, credential: bytes) -> Identity | None:
        if scheme != b"basic":
            return None
        user, password = _decode(credential)
        self._maybe_reload()
        key = hmac.digest(self._cache_key, user.encode() + b"\0" + password, "sha256")
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            self._cache.move_to_end(key)
            return cached[0]
        entry = self._entries.get(user)
        if entry is None:
            await asyncio.to_thread(bcrypt.checkpw, password[:_BCRYPT_MAX], _DUMMY_BCRYPT)
            raise AuthenticationError()
        if entry.kind is HashKind.BCRYPT and len(password) > _BCRYPT_MAX:
            raise AuthenticationError("Passwords longer than 72 bytes are not accepted.")
        self.verifications += 1
        if entry.kind is HashKind.SHA1:
            ok = _check(entry, password)
        else:
            ok = await asyncio.to_thread(_check, entry, password)
        if not ok or self._entries.get(user) is not entry:  # wrong, or changed meanwhile
            raise AuthenticationError()
        identity = self._identity(user)
        self._remember(key, identity)
        return identity

    def _identity(self, user: str) -> Identity:
        role = "admin" if user in self._admins else self._settings.role
        return Identity(principal=user, role=role, credential_id=user, method=self.method)

    def _remember(self, key: bytes, identity: Identity) -> None:
        settings = self._settings
        if settings.cache_ttl <= 0 or settings.cache_size <= 0:
            return
        self._cache[key] = (identity, time.monotonic() + settings.cache_ttl)
        while len(self._cache) > settings.cache_size:
            self._cache.popitem(last=False)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked_at >= self._settings.reload_interval:
            self._checked_at = now
            self._load()

    def _load(self) -> bool:
        """(Re)read the file if it changed; on failure keep what was loaded. False if unread."""
        path = self._settings.file
        try:
            info = os.stat(path)
            signature = (info.st_mtime_ns, info.st_size, info.st_ino)
            if signature == self._signature:
                return True
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.error("htpasswd file %s cannot be read (%s); keeping the last good one", path, exc)
            return False
        entries, problems = parse_htpasswd(text)
        for problem in problems:
            log.warning("htpasswd %s %s: skipped", path, problem)
        weak = sorted(e.user for e in entries.values() if e.kind in WEAK)
        if weak and self._settings.refuse_weak:
            log.warning(
                "htpasswd %s: refusing %d users with weak hashes (apr1, SHA)", path, len(weak)
            )
            entries = {u: e for u, e in entries.items() if e.kind not in WEAK}
        elif weak:
            log.warning(
                "htpasswd %s: %d users have weak hashes (apr1 or SHA): %s; re-hash them with "
                "'htpasswd -B', or set auth.htpasswd.refuse_weak",
                path,
                len(weak),
                ", ".join(weak[:10]),
            )
        self._entries = entries
        self._signature = signature
        self._cache.clear()
        log.info("htpasswd %s: %d users", path, len(entries))
        return True


def _decode(credential: bytes) -> tuple[str, bytes]:
    """``user`` and ``password`` from a Basic credential; AuthenticationError if malformed."""
    try:
        decoded = base64.b64decode(credential, validate=True)
        user_bytes, sep, password = decoded.partition(b":")
        user = user_bytes.decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthenticationError() from None
    if not sep or not user or "\0" in user or b"\0" in password:
        raise AuthenticationError()
    return user, password
