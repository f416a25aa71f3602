"""Bastion's own state directory: the bootstrap administrator key (its hash only)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bastion.auth.apikeys import ApiKeyRecord, generate_key, hash_key
from bastion.errors import ConfigError

__all__ = ["BootstrapKey", "StateDir"]

_ADMIN_FILE = "admin_key.json"


@dataclass(frozen=True, slots=True)
class BootstrapKey:
    record: ApiKeyRecord
    new_key: str | None
    """The plaintext key, only on the start that created it (to be shown once)."""


class StateDir:
    """A private directory (mode 0700) owned by the gateway."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> Path:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create state directory {self.path}: {exc.strerror}"
            ) from None
        return self.path

    def admin_key(self) -> BootstrapKey:
        """The administrator key kept here, created (and returned in plaintext) on first use."""
        path = self.ensure() / _ADMIN_FILE
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                record = ApiKeyRecord(name=data["name"], hash=data["hash"], role="admin")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path} is unreadable or damaged ({exc}); remove it") from None
            return BootstrapKey(record, None)
        key = generate_key()
        record = ApiKeyRecord(name="admin", hash=hash_key(key), role="admin")
        payload = {"name": record.name, "hash": record.hash, "created": int(time.time())}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return BootstrapKey(record, key)
