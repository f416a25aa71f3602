"""Part of phase ``authorize``: which fields of a request body a caller may send.

Some fields of vLLM's request bodies reach past the model into the engine or into other
callers' work: they carry peer addresses for KV transfer, pick a prefix-cache partition,
move a request ahead in the scheduler, name the engine's own request id, replace the chat
template, or tune the multimodal processor. Bastion decides on each such field before
anything is forwarded: it is refused with 400 (``field_not_allowed``, naming the field), or
removed, unless the caller's role is allowed it (``fields.allow``). Every field, why it is
guarded and what a caller gets is in docs/security.md.

With ``fields.cache_salt``, the gateway also sets vLLM's ``cache_salt`` from the caller's
identity, so that one tenant cannot learn another's prompts from prefix-cache timing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bastion.auth.identity import Identity
from bastion.errors import BadRequestError, ConfigError
from bastion.settings import FieldsSettings

__all__ = ["GUARDED_FIELDS", "REMOVE", "FieldPolicy", "FieldRule"]

REMOVE: Any = object()
"""A body override that removes the field instead of setting it."""


@dataclass(frozen=True, slots=True)
class FieldRule:
    name: str
    action: Literal["refuse", "remove"]
    why: str


GUARDED_FIELDS: tuple[FieldRule, ...] = (
    FieldRule(
        "kv_transfer_params",
        "refuse",
        "carries KV-transfer peer addresses and handles: a caller could point the engine at "
        "hosts of its choosing or at another request's cached blocks",
    ),
    FieldRule(
        "cache_salt",
        "refuse",
        "picks the prefix-cache partition: a caller could join another tenant's partition and "
        "probe its prompts through timing (the gateway sets it with fields.cache_salt)",
    ),
    FieldRule(
        "priority",
        "remove",
        "with priority scheduling a caller could move itself ahead of everyone (the gateway "
        "sets it from limits.priority)",
    ),
    FieldRule(
        "request_id",
        "refuse",
        "names the engine's internal request id: a chosen or guessed id can collide with "
        "another caller's request",
    ),
    FieldRule(
        "chat_template",
        "refuse",
        "replaces the model's chat template (a Jinja program run by the engine)",
    ),
    FieldRule(
        "mm_processor_kwargs",
        "refuse",
        "tunes the engine's multimodal processor (image sizes, frame counts): a caller could "
        "make one request cost the memory and time of many",
    ),
    FieldRule(
        "vllm_xargs",
        "refuse",
        "free-form extra arguments handed to the engine's custom logits processors",
    ),
    FieldRule(
        "logits_processors",
        "refuse",
        "names code (qualified class names) for the engine to load and run",
    ),
)

_SALT_SOURCES = {
    "user": lambda i: "user:" + i.principal,
    "team": lambda i: "team:" + (i.teams[0] if i.teams else i.principal),
    "key": lambda i: "key:" + i.credential_id,
}


class FieldPolicy:
    """Checks a parsed JSON body against the guarded fields, for one configuration."""

    def __init__(
        self,
        settings: FieldsSettings,
        known_roles: Container[str],
        rules: tuple[FieldRule, ...] = GUARDED_FIELDS,
    ) -> None:
        self._rules = {rule.name: rule for rule in rules}
        unknown = {f for fields in settings.allow.values() for f in fields} - self._rules.keys()
        if unknown:
            raise ConfigError(
                f"not guarded fields: {', '.join(sorted(unknown))} (see docs/security.md)",
                "fields.allow",
            )
        roles = [role for role in settings.allow if role not in known_roles]
        if roles:
            raise ConfigError(f"unknown roles: {', '.join(sorted(roles))}", "fields.allow")
        self._allowed: Mapping[str, frozenset[str]] = {
            role: frozenset(fields) for role, fields in settings.allow.items()
        }
        self._names = frozenset(self._rules)
        self._salt = _SALT_SOURCES.get(settings.cache_salt)
        self._salts: dict[str, str] = {}

    def check(self, body: dict[str, Any], identity: Identity) -> dict[str, Any] | None:
        """Refuse a body with a field the caller may not send (400); returns the overrides
        to apply when forwarding (fields to remove, the tenant's cache salt), if any."""
        present = self._names.intersection(body)
        overrides: dict[str, Any] | None = None
        if present:
            allowed = self._allowed.get(identity.role, frozenset())
            for name in sorted(present - allowed):
                if self._rules[name].action == "refuse":
                    raise BadRequestError(
                        f"The field '{name}' is not accepted by this gateway.",
                        param=name,
                        code="field_not_allowed",
                    )
                overrides = overrides or {}
                overrides[name] = REMOVE
        if self._salt is not None and "cache_salt" not in present:
            overrides = overrides or {}
            overrides["cache_salt"] = self._salt_of(identity)
        return overrides

    def _salt_of(self, identity: Identity) -> str:
        assert self._salt is not None
        source = self._salt(identity)
        salt = self._salts.get(source)
        if salt is None:
            salt = hashlib.sha256(b"bastion cache salt\0" + source.encode()).hexdigest()[:32]
            if len(self._salts) >= 100_000:
                self._salts.clear()
            self._salts[source] = salt
        return salt
