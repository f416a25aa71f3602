"""Mutual TLS: the verified client certificate names the caller.

The TLS handshake has already verified the certificate against ``server.tls.client_ca``, and
the server protocol kept what it decoded for the connection; this module only turns the
subject into an identity. The ``authenticate`` phase asks it for requests that carry no
``Authorization`` header: a header, when present, decides alone.

A certificate that does not name exactly one user in the configured field (none, several, or
a name with unprintable characters, which could forge log lines) is refused, with the reason
in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable

from bastion.auth.identity import Identity
from bastion.errors import AuthenticationError, ConfigError
from bastion.settings import ClientCertificateSettings
from bastion.types import PeerCertificate

__all__ = ["ClientCertificateAuthenticator", "certificate_user"]

log = logging.getLogger("bastion.auth")

_BUILT_IN_ROLES = frozenset({"admin", "operator", "user", "viewer", "console-viewer"})
_FIELDS = {"common_name": "common name", "email": "email address"}


def certificate_user(certificate: PeerCertificate, user_from: str) -> str:
    """The user a certificate names in ``user_from`` (``common_name`` or ``email``).

    Raises ValueError with the reason when it names none, several, or one that is empty or
    holds control characters.
    """
    if user_from == "common_name":
        found = _subject_values(certificate, "commonName")
    else:
        # The subjectAltName is where email addresses belong; the subject's emailAddress
        # attribute is the older place, used only when there is no subjectAltName email.
        alt_names = certificate.get("subjectAltName", ())
        found = [value for kind, value in alt_names if kind == "email"]
        found = found or _subject_values(certificate, "emailAddress")
    field = _FIELDS[user_from]
    if not found:
        raise ValueError(f"the certificate has no {field}")
    if len(set(found)) > 1:
        raise ValueError(f"the certificate has {len(set(found))} different values for {field}")
    user = found[0]
    if not user.strip() or not user.isprintable():
        raise ValueError(f"the certificate's {field} is blank or holds unprintable characters")
    return user


def _subject_values(certificate: PeerCertificate, attribute: str) -> list[str]:
    rdns: Iterable[tuple[tuple[str, str], ...]] = certificate.get("subject", ())
    return [value for rdn in rdns for name, value in rdn if name == attribute]


class ClientCertificateAuthenticator:
    """Names the caller by its verified client certificate (see the module docstring)."""

    method = "client_certificate"

    def __init__(
        self, settings: ClientCertificateSettings, known_roles: Container[str] = _BUILT_IN_ROLES
    ) -> None:
        if settings.role not in known_roles:
            raise ConfigError(f"unknown role {settings.role!r}", "auth.client_certificate.role")
        self._settings = settings
        self._admins = frozenset(settings.admins)

    def identify(self, certificate: PeerCertificate | None) -> Identity:
        """The identity a verified certificate names; AuthenticationError (401) when there is
        no certificate or it names no usable user."""
        if not certificate:
            raise AuthenticationError()
        serial = str(certificate.get("serialNumber", "-"))
        try:
            user = certificate_user(certificate, self._settings.user_from)
        except ValueError as exc:
            # repr(): a subject may hold anything its CA let through, newlines included
            log.info(
                "client certificate refused: %s (serial %s, subject %r)",
                exc,
                serial,
                _subject_text(certificate),
            )
            raise AuthenticationError() from None
        role = "admin" if user in self._admins else self._settings.role
        return Identity(
            principal=user, role=role, credential_id=f"certificate:{serial}", method=self.method
        )


def _subject_text(certificate: PeerCertificate) -> str:
    rdns: Iterable[tuple[tuple[str, str], ...]] = certificate.get("subject", ())
    return ", ".join(f"{name}={value}" for rdn in rdns for name, value in rdn)
