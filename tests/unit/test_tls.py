"""The server's TLS context: modern versions only; bad files are configuration errors; changed
files are picked up by new handshakes, broken ones never replace working ones."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from pathlib import Path

import pytest
import trustme

from bastion.errors import ConfigError
from bastion.server.tls import CertificateReloader, server_context
from bastion.settings import TlsSettings
from tests.support.tls import client_context, common_name, handshake, write_leaf


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
