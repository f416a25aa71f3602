"""The TLS context for the gateway's own port: Mozilla's protocol versions and cipher suites,
optional mTLS, and certificates that are picked up when their files change.

``server.tls.profile`` follows Mozilla's server-side TLS recommendations: ``intermediate`` (the
default) is TLS 1.2 and 1.3, TLS 1.2 with the six ECDHE suites of :data:`INTERMEDIATE_CIPHERS`
(guidelines 5.7 also list three DHE suites, which OpenSSL never negotiates here since no DH
parameters are loaded; 6.0 dropped them); ``modern`` is TLS 1.3 only. TLS 1.3's suites are
OpenSSL's defaults, which are the profiles' three. The client chooses among the suites, as
the profiles say (all are strong; one without AES instructions picks ChaCha20).

Key-exchange groups are the profiles' three (X25519, prime256v1, secp384r1), or
``server.tls.groups``; OpenSSL's default list would add X448 and secp521r1 (and, for TLS 1.3,
the ffdhe groups). Python's ``ssl`` cannot set a list before 3.15, so
:mod:`bastion.server.tlsgroups` does it through OpenSSL itself; where even that is not
possible, a configured list stops start-up and the profile's default is logged as not
applied, once.

A reload builds a fresh context from the files and points new handshakes at it: the context
the listening socket was given switches each handshake to the latest one in its server-name
callback (which OpenSSL calls for every ClientHello, with or without SNI). Loading new files
into the listening context itself would be unsafe: OpenSSL drops the old key as soon as a
new certificate is set, so a key that then fails to load leaves no usable certificate; a
certificate with another key type is added beside the old one instead of replacing it; and
CA certificates can be added to a context but never removed.

A reload applies to new handshakes. Connections already open keep what they negotiated, and
a caller resuming a TLS session made before the reload is not verified again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)

from bastion.errors import ConfigError
from bastion.server.tlsgroups import PROFILE_GROUPS, GroupsUnsupportedError, set_groups
from bastion.settings import TlsSettings

__all__ = ["INTERMEDIATE_CIPHERS", "CertificateReloader", "server_context"]

log = logging.getLogger("bastion.tls")

_Signature = tuple[tuple[int, int, int] | None, ...]

INTERMEDIATE_CIPHERS: Final = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
))  # fmt: skip
"""Mozilla's intermediate TLS 1.2 suites (an ECDSA certificate uses the first of each pair, an
RSA one the second)."""


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A server context: the profile's versions and suites, the configured certificate, and,
    with a client CA, client certificates verified against it. Unreadable or mismatched files
    and cipher lists that select nothing are a ConfigError naming the setting."""
    return _load(settings)[0]


def _load(settings: TlsSettings) -> tuple[ssl.SSLContext, x509.Certificate]:
    """A fresh context from the files, and the certificate it serves."""
    leaf = _check_pair(settings.certificate, settings.key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _apply_profile(context, settings)
    try:
        context.load_cert_chain(settings.certificate, settings.key)
    except (OSError, ssl.SSLError) as exc:  # checked above: the files changed meanwhile
        raise ConfigError(
            f"cannot load {settings.certificate} and {settings.key}: {exc}", "server.tls"
        ) from None
    if settings.client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load {settings.client_ca}: {exc}", "server.tls.client_ca"
            ) from None
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.client_certificate == "required" else ssl.CERT_OPTIONAL
        )
    return context, leaf


def _apply_profile(context: ssl.SSLContext, settings: TlsSettings) -> None:
    """Versions and suites of ``settings.profile`` (see the module's documentation)."""
    modern = settings.profile == "modern"
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if modern else ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.set_ciphers(settings.ciphers or INTERMEDIATE_CIPHERS)
    except ssl.SSLError:
        raise ConfigError(
            f"no cipher suite that OpenSSL knows in {settings.ciphers!r}", "server.tls.ciphers"
        ) from None
    _apply_groups(context, settings.groups)


def _apply_groups(context: ssl.SSLContext, groups: str | None) -> None:
    """The configured key-exchange groups, or the profile's (see the module's documentation)."""
    try:
        set_groups(context, groups or PROFILE_GROUPS)
    except ValueError as exc:
        raise ConfigError(str(exc), "server.tls.groups") from None
    except GroupsUnsupportedError as exc:
        if groups is not None:
            raise ConfigError(
                f"cannot set key-exchange groups with this Python and OpenSSL ({exc})",
                "server.tls.groups",
            ) from None
        _warn_groups_once(str(exc))


@functools.cache
def _warn_groups_once(reason: str) -> None:
    log.warning(
        "TLS key-exchange groups left at OpenSSL's defaults (%s): this Python's ssl module "
        "cannot set them (see server.tls.groups in docs/configuration.md)",
        reason,
    )


def _check_pair(certificate: Path, key: Path) -> x509.Certificate:
    """The chain's first certificate, once both files parse and the key is its key.

    OpenSSL's own errors do not say which file is at fault; these do, and never quote the
    key's content.
    """
    try:
        chain = x509.load_pem_x509_certificates(_read(certificate, "server.tls.certificate"))
    except ValueError:
        raise ConfigError(
            f"{certificate} holds no complete PEM certificate", "server.tls.certificate"
        ) from None
    try:
        private = serialization.load_pem_private_key(_read(key, "server.tls.key"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{key} holds no complete, unencrypted PEM private key", "server.tls.key"
        ) from None
    if _public(chain[0].public_key()) != _public(private.public_key()):
        raise ConfigError(
            f"{key} is not the key of the first certificate in {certificate}", "server.tls.key"
        )
    return chain[0]


def _public(key: CertificatePublicKeyTypes | PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", setting) from None


def _signature(paths: tuple[Path, ...]) -> _Signature:
    """What identifies the files' versions: modification time, size and inode of each (None
    for a file that cannot be looked at)."""
    found: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            found.append(None)
        else:
            found.append((info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(found)


def _describe(leaf: x509.Certificate) -> str:
    until = leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{leaf.subject.rfc4514_string()!r}, valid until {until}"


class CertificateReloader:
    """Keeps the gateway's certificate, key and client CAs in step with their files.

    ``context`` is the context to serve with; every ``reload_interval`` seconds (between
    :meth:`start` and :meth:`stop`) the files are looked at, and when one changed they are
    loaded and new handshakes use them. Files that cannot be loaded (unreadable, half
    written, a key that is not the certificate's) are reported once and tried again on
    every look; meanwhile the previous certificate is served. See the module docstring.
    """

    def __init__(self, settings: TlsSettings) -> None:
        self._settings = settings
        self._files = tuple(
            p for p in (settings.certificate, settings.key, settings.client_ca) if p is not None
        )
        # Taken before loading, so that a change made while loading is seen next time.
        self._loaded = _signature(self._files)
        self.context, leaf = _load(settings)
        self.context.sni_callback = self._select
        self._current = self.context
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        """How many times new files were put in use."""
        self.not_after = leaf.not_valid_after_utc.timestamp()
        """When the certificate in use expires (Unix time)."""
        log.info("TLS certificate in use: %s", _describe(leaf))

    def _select(
        self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        current = self._current
        if current is not context:
            connection.context = current

    def check(self) -> bool:
        """Look at the files once; when they changed, load them and have new handshakes use
        them. True when new files were put in use. Blocking: file reads and parsing."""
        seen = _signature(self._files)
        if seen == self._loaded:
            self._failure = None  # back to the files in use
            return False
        try:
            context, leaf = _load(self._settings)
        except ConfigError as exc:
            failure = str(exc)
            if failure != self._failure:
                log.warning(
                    "TLS files changed but cannot be used (%s); still serving the previous "
                    "certificate, trying again every %gs",
                    failure,
                    self._settings.reload_interval,
                )
            self._failure = failure
            return False
        self._current = context  # one reference assignment: handshakes see old or new
        self._loaded = seen
        self._failure = None
        self.reloads += 1
        self.not_after = leaf.not_valid_after_utc.timestamp()
        log.info("TLS certificate reloaded: now serving %s", _describe(leaf))
        if leaf.not_valid_after_utc <= datetime.now(UTC):
            log.warning("the TLS certificate in %s has expired", self._settings.certificate)
        return True

    async def start(self) -> None:
        """Start looking at the files every ``reload_interval`` seconds."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="bastion-tls-reload")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reload_interval)
            try:
                await asyncio.to_thread(self.check)  # a slow file system never stalls the loop
            except Exception:  # keep watching: the next look may well succeed
                log.exception("looking at the TLS files failed")
