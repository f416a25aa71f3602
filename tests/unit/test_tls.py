"""The server's TLS context: modern versions only; bad files are configuration errors."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from bastion.errors import ConfigError
from bastion.server.tls import server_context
from bastion.settings import TlsSettings


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
