"""The server's TLS context: modern versions only; bad files are configuration errors; changed
files are picked up by new handshakes, broken ones never replace working ones."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from bastion.errors import ConfigError
from bastion.observability.instruments import GatewayMetrics
from bastion.observability.watches import watch_certificate
from bastion.server import tlsgroups
from bastion.server.tls import CertificateReloader, server_context
from bastion.server.tlsgroups import PROFILE_GROUPS
from bastion.settings import MetricsSettings, TlsSettings
from tests.support.tls import client_context, common_name, handshake, negotiated, write_leaf


def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def test_tls_1_2_is_the_minimum_and_client_certificates_are_verified(tmp_path: Path) -> None:
    cert, key, ca_file = files(tmp_path)
    plain = server_context(TlsSettings(certificate=cert, key=key))
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.verify_mode == ssl.CERT_NONE
    mutual = server_context(TlsSettings(certificate=cert, key=key, client_ca=ca_file))
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    optional = server_context(
        TlsSettings(certificate=cert, key=key, client_ca=ca_file, client_certificate="optional")
    )
    assert optional.verify_mode == ssl.CERT_OPTIONAL


def test_unreadable_or_mismatched_files_are_config_errors(tmp_path: Path) -> None:
    cert, key, ca_file = files(tmp_path)
    with pytest.raises(ConfigError, match=r"server\.tls"):
        server_context(TlsSettings(certificate=tmp_path / "missing.pem", key=key))
    with pytest.raises(ConfigError, match=r"server\.tls"):
        server_context(TlsSettings(certificate=ca_file, key=key))  # not the key's certificate
    with pytest.raises(ConfigError, match="client_ca"):
        server_context(TlsSettings(certificate=cert, key=key, client_ca=tmp_path / "none.pem"))


# Profiles: Mozilla's server-side TLS recommendations

INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
}


def rsa_files(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    cert, key = tmp_path / "rsa.pem", tmp_path / "rsa-key.pem"
    write_leaf(ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.RSA), cert, key)
    return ca, cert, key


def offering(
    ca: trustme.CA, ciphers: str | None = None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
) -> ssl.SSLContext:
    """A client that speaks only ``version`` and, for TLS 1.2, offers only ``ciphers``."""
    context = client_context(ca)
    context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def test_the_default_profile_offers_exactly_mozillas_intermediate_tls_1_2_suites(
    tmp_path: Path,
) -> None:
    cert, key, _ = files(tmp_path)
    context = server_context(TlsSettings(certificate=cert, key=key))
    offered = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert offered == INTERMEDIATE_TLS12
    tls13 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"}
    assert tls13 == {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                     "TLS_CHACHA20_POLY1305_SHA256"}  # fmt: skip


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_cbc_suites_are_refused_and_aead_suites_accepted(tmp_path: Path, key_type: str) -> None:
    """The two CBC suites Python's default list adds (SHA-256 and SHA-384 HMACs) for each key
    type; only an AEAD suite gets a handshake."""
    if key_type == "rsa":
        ca, cert, key = rsa_files(tmp_path)
    else:
        ca = trustme.CA()
        cert, key = tmp_path / "ec.pem", tmp_path / "ec-key.pem"
        write_leaf(ca.issue_cert("127.0.0.1"), cert, key)
    server = server_context(TlsSettings(certificate=cert, key=key))
    kind = key_type.upper()
    for cbc in (f"ECDHE-{kind}-AES128-SHA256", f"ECDHE-{kind}-AES256-SHA384"):
        with pytest.raises(ssl.SSLError, match=r"NO_SHARED_CIPHER|HANDSHAKE_FAILURE"):
            negotiated(server, offering(ca, cbc))
    for aead in (f"ECDHE-{kind}-AES128-GCM-SHA256", f"ECDHE-{kind}-CHACHA20-POLY1305"):
        assert negotiated(server, offering(ca, aead)) == ("TLSv1.2", aead)
    # A TLS 1.3 client gets its own suites, whatever the TLS 1.2 list
    assert negotiated(server, offering(ca, version=ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"


def test_the_client_chooses_among_the_suites(tmp_path: Path) -> None:
    """As the profiles say (every suite is strong): a client that prefers ChaCha20, such as
    one without AES instructions, gets it."""
    cert, key, _ = files(tmp_path)
    ca = trustme.CA()
    write_leaf(ca.issue_cert("127.0.0.1"), cert, key)
    server = server_context(TlsSettings(certificate=cert, key=key))
    prefers = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"
    assert negotiated(server, offering(ca, prefers))[1] == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_the_modern_profile_is_tls_1_3_only(tmp_path: Path) -> None:
    ca, cert, key = rsa_files(tmp_path)
    server = server_context(TlsSettings(certificate=cert, key=key, profile="modern"))
    assert server.minimum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError):
        negotiated(server, offering(ca, "ECDHE-RSA-AES128-GCM-SHA256"))
    assert negotiated(server, offering(ca, version=ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"


def test_custom_tls_1_2_ciphers(tmp_path: Path) -> None:
    ca, cert, key = rsa_files(tmp_path)
    only = "ECDHE-RSA-AES256-GCM-SHA384"
    server = server_context(TlsSettings(certificate=cert, key=key, ciphers=only))
    assert negotiated(server, offering(ca, only)) == ("TLSv1.2", only)
    with pytest.raises(ssl.SSLError):
        negotiated(server, offering(ca, "ECDHE-RSA-AES128-GCM-SHA256"))
    with pytest.raises(ConfigError, match=r"server\.tls\.ciphers"):
        server_context(TlsSettings(certificate=cert, key=key, ciphers="NO-SUCH-CIPHER"))
    with pytest.raises(ValueError, match="modern"):
        TlsSettings(certificate=cert, key=key, profile="modern", ciphers=only)


def offering_group(ca: trustme.CA, group: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = offering(ca, version=version)
    context.set_ecdh_curve(group)  # a client context offers only this group
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("profile", ["intermediate", "modern"])
def test_the_profiles_key_exchange_groups_only(
    tmp_path: Path, profile: Literal["intermediate", "modern"], version: ssl.TLSVersion
) -> None:
    """An RSA certificate: with ECDSA, TLS 1.2's groups also bound the certificate's curve."""
    if profile == "modern" and version is ssl.TLSVersion.TLSv1_2:
        return  # modern has no TLS 1.2 (test_the_modern_profile_is_tls_1_3_only)
    ca, cert, key = rsa_files(tmp_path)
    server = server_context(TlsSettings(certificate=cert, key=key, profile=profile))
    for group in PROFILE_GROUPS.split(":"):
        negotiated(server, offering_group(ca, group, version))
    for group in ("X448", "secp521r1"):
        with pytest.raises(ssl.SSLError):
            negotiated(server, offering_group(ca, group, version))


def test_configured_groups_and_names_openssl_does_not_know(tmp_path: Path) -> None:
    ca, cert, key = rsa_files(tmp_path)
    server = server_context(TlsSettings(certificate=cert, key=key, groups="secp521r1"))
    negotiated(server, offering_group(ca, "secp521r1", ssl.TLSVersion.TLSv1_3))
    with pytest.raises(ssl.SSLError):
        negotiated(server, offering_group(ca, "X25519", ssl.TLSVersion.TLSv1_3))
    with pytest.raises(ConfigError, match=r"server\.tls\.groups"):
        server_context(TlsSettings(certificate=cert, key=key, groups="no-such-group"))


def test_groups_that_cannot_be_set_stop_a_configured_list_and_warn_for_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Python whose SSLContext is not laid out as expected: the check finds no SSL_CTX."""
    cert, key, _ = files(tmp_path)

    def unsupported(context: ssl.SSLContext, library: object) -> int:
        raise tlsgroups.GroupsUnsupportedError("the context's OpenSSL object was not found")

    monkeypatch.setattr(tlsgroups, "_ssl_ctx", unsupported)
    with pytest.raises(ConfigError, match=r"server\.tls\.groups.*cannot set"):
        server_context(TlsSettings(certificate=cert, key=key, groups="X25519"))
    with caplog.at_level(logging.WARNING, logger="bastion.tls"):
        server_context(TlsSettings(certificate=cert, key=key))
    assert "left at OpenSSL's defaults" in caplog.text


def test_the_ssl_ctx_check_refuses_a_pointer_whose_options_do_not_follow_the_context() -> None:
    """OpenSSL must report the context's options for the pointer, also after one is flipped
    through Python: a pointer to anything else is refused, never written through."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    library = tlsgroups._library()
    assert tlsgroups._ssl_ctx(context, library)  # the real layout passes

    class Stale:  # reports the options as they were, whatever Python sets since
        def __init__(self, options: int) -> None:
            self.options = options

        def SSL_CTX_get_options(self, pointer: int) -> int:
            return self.options

    with pytest.raises(tlsgroups.GroupsUnsupportedError):
        tlsgroups._ssl_ctx(context, Stale(int(context.options)))  # type: ignore[arg-type]
    assert context.options == ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).options


# Reloading: fresh files reach new handshakes; broken ones never replace working ones.


@pytest.fixture
def served(tmp_path: Path) -> tuple[trustme.CA, TlsSettings]:
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_leaf(ca.issue_cert("127.0.0.1", common_name="first"), cert, key)
    return ca, TlsSettings(certificate=cert, key=key, reload_interval=0.05)


def served_name(reloader: CertificateReloader, *cas: trustme.CA) -> str | None:
    return common_name(handshake(reloader.context, client_context(*cas))[0])


def test_changed_files_are_served_to_new_handshakes(
    served: tuple[trustme.CA, TlsSettings],
) -> None:
    ca, settings = served
    reloader = CertificateReloader(settings)
    assert not reloader.check()  # nothing changed yet
    assert served_name(reloader, ca) == "first"
    other_ca = trustme.CA()  # another CA, and another key type
    leaf = other_ca.issue_cert("127.0.0.1", common_name="second", key_type=trustme.KeyType.RSA)
    write_leaf(leaf, settings.certificate, settings.key)
    assert reloader.check()
    assert served_name(reloader, other_ca) == "second"
    with pytest.raises(ssl.SSLError):  # the old certificate is gone, not kept beside the new
        served_name(reloader, ca)
    assert not reloader.check()
    assert reloader.reloads == 1


def test_the_expiry_of_the_certificate_in_use_is_a_metric(
    served: tuple[trustme.CA, TlsSettings],
) -> None:
    ca, settings = served
    first = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    write_leaf(ca.issue_cert("127.0.0.1", not_after=first), settings.certificate, settings.key)
    reloader = CertificateReloader(settings)
    metrics = GatewayMetrics(MetricsSettings())
    watch_certificate(metrics, reloader)
    name = "bastion_tls_certificate_expiry_timestamp_seconds"

    def expiry() -> float:
        return next(
            s.value
            for f in text_string_to_metric_families(metrics.render().decode())
            for s in f.samples
            if s.name == name
        )

    assert expiry() == first.timestamp()
    renewed = datetime(2032, 1, 2, 3, 4, 5, tzinfo=UTC)
    write_leaf(ca.issue_cert("127.0.0.1", not_after=renewed), settings.certificate, settings.key)
    assert reloader.check()
    assert expiry() == renewed.timestamp()


def test_files_that_cannot_be_loaded_keep_the_old_certificate_until_fixed(
    served: tuple[trustme.CA, TlsSettings], caplog: pytest.LogCaptureFixture
) -> None:
    ca, settings = served
    reloader = CertificateReloader(settings)
    replacement = ca.issue_cert("127.0.0.1", common_name="second")
    stranger = ca.issue_cert("127.0.0.1", common_name="stranger")
    cert_pem = replacement.cert_chain_pems[0].bytes()
    broken = [
        (settings.certificate, cert_pem, stranger.private_key_pem.bytes(), "is not the key"),
        (settings.certificate, cert_pem[: len(cert_pem) // 2], None, "no complete PEM"),
        (settings.key, cert_pem, b"-----BEGIN PRIVATE KEY-----\nMIGH", "no complete, unencrypted"),
    ]
    for named, cert_bytes, key_bytes, problem in broken:
        caplog.clear()
        if cert_bytes is not None:
            settings.certificate.write_bytes(cert_bytes)
        if key_bytes is not None:
            settings.key.write_bytes(key_bytes)
        with caplog.at_level(logging.INFO, "bastion.tls"):
            for _ in range(3):  # tried on every look, reported once
                assert not reloader.check()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert problem in warnings[0] and str(named) in warnings[0]
        assert "still serving the previous certificate" in warnings[0]
        assert "PRIVATE KEY" not in caplog.text and "MIGH" not in caplog.text
        assert served_name(reloader, ca) == "first"
    settings.key.unlink()
    assert not reloader.check()
    assert f"cannot read {settings.key}" in caplog.text
    with caplog.at_level(logging.INFO, "bastion.tls"):
        write_leaf(replacement, settings.certificate, settings.key)
        assert reloader.check()
    assert served_name(reloader, ca) == "second"
    assert "TLS certificate reloaded: now serving 'CN=second" in caplog.text


def test_a_client_ca_taken_out_of_the_file_is_no_longer_trusted(
    served: tuple[trustme.CA, TlsSettings], tmp_path: Path
) -> None:
    ca, settings = served
    old_clients, new_clients = trustme.CA(), trustme.CA()
    client_ca = tmp_path / "clients.pem"
    old_clients.cert_pem.write_to_path(str(client_ca))
    settings = settings.model_copy(update={"client_ca": client_ca})
    reloader = CertificateReloader(settings)
    old_caller = client_context(ca, cert=old_clients.issue_cert("old@example.test"))
    new_caller = client_context(ca, cert=new_clients.issue_cert("new@example.test"))
    assert handshake(reloader.context, old_caller)[1] is not None
    with pytest.raises(ssl.SSLError):
        handshake(reloader.context, new_caller)
    new_clients.cert_pem.write_to_path(str(client_ca))
    assert reloader.check()
    assert handshake(reloader.context, new_caller)[1] is not None
    with pytest.raises(ssl.SSLError):
        handshake(reloader.context, old_caller)


async def test_the_reloader_looks_at_the_files_until_stopped(
    served: tuple[trustme.CA, TlsSettings],
) -> None:
    ca, settings = served
    reloader = CertificateReloader(settings)
    await reloader.start()
    try:
        write_leaf(
            ca.issue_cert("127.0.0.1", common_name="second"), settings.certificate, settings.key
        )
        deadline = time.monotonic() + 5
        while reloader.reloads == 0:
            assert time.monotonic() < deadline, "the change was never picked up"
            await asyncio.sleep(0.01)
        assert served_name(reloader, ca) == "second"
    finally:
        await reloader.stop()
    write_leaf(ca.issue_cert("127.0.0.1", common_name="third"), settings.certificate, settings.key)
    await asyncio.sleep(settings.reload_interval * 4)  # proving a negative: nothing looks now
    assert reloader.reloads == 1
