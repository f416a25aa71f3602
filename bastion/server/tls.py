"""The TLS context for the gateway's own port: modern protocol versions, optional mTLS."""

from __future__ import annotations

import ssl

from bastion.errors import ConfigError
from bastion.settings import TlsSettings

__all__ = ["server_context"]


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A server context: TLS 1.2 minimum, the configured certificate, and, with a client CA,
    client certificates verified against it. Unreadable or mismatched files are a
    ConfigError naming the setting."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(settings.certificate, settings.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the certificate and key: {exc}", "server.tls") from None
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
    return context
