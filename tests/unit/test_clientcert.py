"""Mutual TLS identities: the verified client certificate names the caller, when no
``Authorization`` header does. Certificates are decoded by a real handshake."""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.auth.clientcert import ClientCertificateAuthenticator
from bastion.auth.guard import FailureGuard
from bastion.auth.identity import Identity
from bastion.errors import AuthenticationError, ConfigError
from bastion.pipeline.authenticate import Authenticate
from bastion.pipeline.context import RequestContext
from bastion.policy.policy import Policy
from bastion.server.downstream import CorkableTransport, DownstreamConnection
from bastion.settings import (
    BruteForceSettings,
    ClientCertificateSettings,
    parse_settings,
)
from bastion.types import DOWNSTREAM_SCOPE_KEY, Message
from tests.support.tls import client_context, handshake

CA = trustme.CA()


def _server() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert("127.0.0.1").configure_cert(context)
    CA.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


SERVER = _server()


def verified(leaf: trustme.LeafCert) -> dict[str, Any]:
    """The certificate as the server protocol keeps it: decoded by a real handshake."""
    found = handshake(SERVER, client_context(CA, cert=leaf))[1]
    assert found is not None
    return found


def crafted(
    subject: list[tuple[x509.ObjectIdentifier, str]], emails: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A certificate signed by ``CA`` with exactly this subject (which trustme cannot make)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = serialization.load_pem_private_key(CA.private_key_pem.bytes(), password=None)
    issuer = x509.load_pem_x509_certificate(CA.cert_pem.bytes()).subject
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in subject]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if emails:
        names = [x509.RFC822Name(e) for e in emails]
        # critical when it is all the certificate names (RFC 5280; Python 3.13 checks it)
        alt_names = x509.SubjectAlternativeName(names)
        builder = builder.add_extension(alt_names, critical=not subject)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # trustme's default key type
    # as every CA writes it, and as Python 3.13's strict verification requires (RFC 5280)
    issuer_key = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = builder.add_extension(issuer_key, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    context = client_context(CA)
    with trustme.Blob(cert.public_bytes(serialization.Encoding.PEM) + key_pem).tempfile() as path:
        context.load_cert_chain(path)
    found = handshake(SERVER, context)[1]
    assert found is not None
    return found


def authenticator(**settings: Any) -> ClientCertificateAuthenticator:
    return ClientCertificateAuthenticator(ClientCertificateSettings(**settings))


def test_the_common_name_names_the_user_and_admins_get_admin() -> None:
    carol = verified(CA.issue_cert("carol@example.test", common_name="carol"))
    identity = authenticator(admins=["ops"]).identify(carol)
    assert identity == Identity(
        principal="carol",
        role="user",
        credential_id=f"certificate:{carol['serialNumber']}",
        method="client_certificate",
    )
    ops = verified(CA.issue_cert("ops@example.test", common_name="ops"))
    assert authenticator(admins=["ops"]).identify(ops).role == "admin"
    assert authenticator(role="viewer").identify(carol).role == "viewer"


def test_the_email_comes_from_the_alt_name_else_from_the_subject() -> None:
    by_email = authenticator(user_from="email")
    carol = verified(CA.issue_cert("carol@example.test", common_name="carol"))
    assert by_email.identify(carol).principal == "carol@example.test"
    older = crafted([(NameOID.COMMON_NAME, "dave"), (NameOID.EMAIL_ADDRESS, "dave@example.test")])
    assert by_email.identify(older).principal == "dave@example.test"
    both = crafted([(NameOID.EMAIL_ADDRESS, "old@example.test")], emails=("new@example.test",))
    assert by_email.identify(both).principal == "new@example.test"


@pytest.mark.parametrize(
    ("user_from", "subject", "emails", "reason"),
    [
        ("common_name", [(NameOID.ORGANIZATION_NAME, "Acme")], ("x@example.test",), "no common"),
        ("email", [(NameOID.COMMON_NAME, "erin")], (), "no email address"),
        (
            "common_name",
            [(NameOID.COMMON_NAME, "erin"), (NameOID.COMMON_NAME, "root")],
            (),
            "2 different values for common name",
        ),
        ("email", [], ("a@example.test", "b@example.test"), "2 different values"),
        ("common_name", [(NameOID.COMMON_NAME, "erin\nforged line")], (), "unprintable"),
        ("common_name", [(NameOID.COMMON_NAME, "  ")], (), "blank"),
    ],
    ids=["no-cn", "no-email", "two-cns", "two-emails", "newline", "blank"],
)
def test_a_certificate_naming_no_single_user_is_refused_with_the_reason_logged(
    user_from: str,
    subject: list[tuple[x509.ObjectIdentifier, str]],
    emails: tuple[str, ...],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    certificate = crafted(subject, emails)
    with caplog.at_level(logging.INFO, "bastion.auth"), pytest.raises(AuthenticationError):
        authenticator(user_from=user_from).identify(certificate)
    assert reason in caplog.text
    assert certificate["serialNumber"] in caplog.text
    assert "\nforged" not in caplog.text  # the subject is quoted, never a line of its own


def test_no_certificate_is_refused() -> None:
    nothing: dict[str, Any] | None
    for nothing in (None, {}):
        with pytest.raises(AuthenticationError):
            authenticator().identify(nothing)


def test_the_role_must_be_known() -> None:
    with pytest.raises(ConfigError, match=r"auth\.client_certificate\.role.*'auditor'"):
        authenticator(role="auditor")
    known = {"auditor", "user"}
    assert ClientCertificateAuthenticator(
        ClientCertificateSettings(role="auditor"), known_roles=known
    )


def test_settings_refuse_client_certificates_without_a_client_ca(tmp_path: Path) -> None:
    tls = {"certificate": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem")}
    auth = {"client_certificate": {"admins": ["ops"]}}
    for server in ({}, {"tls": tls}):
        with pytest.raises(
            ConfigError, match=r"auth\.client_certificate needs server\.tls\.client_ca"
        ):
            parse_settings({"server": server, "auth": auth})
    settings = parse_settings(
        {"server": {"tls": {**tls, "client_ca": str(tmp_path / "ca.pem")}}, "auth": auth}
    )
    assert settings.auth.client_certificate == ClientCertificateSettings(admins=("ops",))
    unknown = parse_settings(
        {
            "server": {"tls": {**tls, "client_ca": str(tmp_path / "ca.pem")}},
            "auth": {"client_certificate": {"role": "nobody"}},
        }
    )
    with pytest.raises(ConfigError, match=r"auth\.client_certificate\.role: unknown role 'nobody'"):
        Policy(unknown)  # what `bastion config check` runs


# The authenticate phase: the header, when present, decides alone.


class _HeaderAuthenticator:
    async def authenticate(self, scheme: bytes, credential: bytes) -> Identity | None:
        if scheme == b"bearer" and credential == b"good":
            return Identity("key-holder", "user", "bst_good", "api_key")
        raise AuthenticationError()


async def _receive() -> Message:
    return {"type": "http.disconnect"}


async def _send(message: Message) -> None:
    return None


def request(authorization: bytes | None, certificate: dict[str, Any] | None) -> RequestContext:
    downstream = DownstreamConnection(CorkableTransport(None))  # type: ignore[arg-type]
    downstream.peer_certificate = certificate
    scope: dict[str, Any] = {"type": "http", "method": "GET", "client": ("10.0.0.1", 5)}
    scope[DOWNSTREAM_SCOPE_KEY] = downstream
    ctx = RequestContext(scope, _receive, _send)
    ctx.authorization = authorization
    return ctx


def phase(certificates: ClientCertificateAuthenticator | None) -> Authenticate:
    guard = FailureGuard(BruteForceSettings())
    return Authenticate((_HeaderAuthenticator(),), guard, certificates)


async def test_the_certificate_names_callers_that_send_no_authorization_header() -> None:
    carol = verified(CA.issue_cert("carol@example.test", common_name="carol"))
    authenticate = phase(authenticator())
    ctx = request(None, carol)
    await authenticate(ctx)
    assert ctx.identity is not None
    assert (ctx.identity.principal, ctx.identity.method) == ("carol", "client_certificate")
    for header, principal in ((b"Bearer good", "key-holder"), (b"Bearer bad", None)):
        ctx = request(header, carol)  # a header decides alone, even a wrong one
        if principal is None:
            with pytest.raises(AuthenticationError):
                await authenticate(ctx)
        else:
            await authenticate(ctx)
            assert ctx.identity is not None and ctx.identity.principal == principal
    with pytest.raises(AuthenticationError):
        await authenticate(request(None, None))  # no header, no certificate


async def test_without_the_setting_a_certificate_alone_is_refused() -> None:
    carol = verified(CA.issue_cert("carol@example.test", common_name="carol"))
    with pytest.raises(AuthenticationError):
        await phase(None)(request(None, carol))
