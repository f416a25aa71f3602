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
import ipaddress
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
        "carries KV-transfer peer addresses (remote_host, remote_port) and block handles: a "
        "caller could point the engine at hosts of its choosing or at another request's "
        "blocks; its prompt_token_ids also replace the rendered prompt, bypassing the chat "
        "template",
    ),
    FieldRule(
        "ec_transfer_params",
        "refuse",
        "the encoder-cache counterpart of kv_transfer_params",
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
        "names the engine's request id (and a Responses API response's id): a chosen id can "
        "collide with another caller's request, or overwrite its stored response",
    ),
    FieldRule(
        "session_id",
        "refuse",
        "tags the request's KV-cache events for cache-aware routing: a caller could pose as "
        "another's session",
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
        "media_io_kwargs",
        "refuse",
        "tunes how the engine decodes fetched media, with the same effect",
    ),
    FieldRule(
        "vllm_xargs",
        "refuse",
        "free-form arguments for the engine's logits processors and plugins",
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
        self._public_media = settings.media_urls == "public"

    def check(
        self, body: dict[str, Any], identity: Identity, raw: bytes = b""
    ) -> dict[str, Any] | None:
        """Refuse a body with a field the caller may not send, or a media URL the engine
        must not fetch (400); returns the overrides to apply when forwarding (fields to
        remove, the tenant's cache salt), if any. ``raw`` is the body as received (a media
        URL is looked for only when its bytes hint at one)."""
        if self._public_media and (b"_url" in raw or b'"url"' in raw):
            check_media_urls(body)
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


_MEDIA_KEYS = frozenset({"image_url", "audio_url", "video_url"})
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".lan", ".home.arpa")


def check_media_urls(body: Any, depth: int = 0) -> None:
    """Refuse (400) a media URL the engine would fetch from inside the network: a scheme other
    than http, https and data, or a host that is loopback, private, link-local, reserved, a
    single label or an internal name. Names that resolve to such addresses cannot be seen
    here: restrict the engine's own fetching too (vLLM's ``--allowed-media-domains``)."""
    if depth > 32:
        return
    if isinstance(body, dict):
        for key, value in body.items():
            if key in _MEDIA_KEYS:
                url = value.get("url") if isinstance(value, dict) else value
                if isinstance(url, str):
                    _check_url(url, key)
            elif key == "source" and isinstance(value, dict) and value.get("type") == "url":
                url = value.get("url")
                if isinstance(url, str):
                    _check_url(url, "source.url")
            if isinstance(value, (dict, list)):
                check_media_urls(value, depth + 1)
    elif isinstance(body, list):
        for item in body:
            if isinstance(item, (dict, list)):
                check_media_urls(item, depth + 1)


def _check_url(url: str, param: str) -> None:
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if scheme == "data" and sep:
        return
    if scheme in ("http", "https") and rest.startswith("//"):
        host = _host(rest[2:])
        if host and not _internal(host):
            return
    raise BadRequestError(
        "Media URLs must be data: URLs or http(s) URLs of public hosts.",
        param=param,
        code="media_url_not_allowed",
    )


def _host(authority_and_path: str) -> str:
    authority = authority_and_path.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    return host.rpartition(":")[0].lower() if host.count(":") == 1 else host.lower()


def _internal(host: str) -> bool:
    host = host.rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if "." not in host or host == "localhost" or host.endswith(_INTERNAL_SUFFIXES):
            return True
        return _numeric_host(host)
    return not address.is_global or address.is_multicast


def _numeric_host(host: str) -> bool:
    """Hosts that inet_aton reads as addresses (``127.1``, ``0x7f.0.0.1``, ``2130706433``)
    are refused whatever they name: the engine's resolver may read them so."""
    return all(part.isdigit() or part.lower().startswith("0x") for part in host.split("."))
