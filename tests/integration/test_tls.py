"""HTTPS on the gateway's port: the openai client over TLS, old protocols refused, mTLS."""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import trustme

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

KEYS = Keys()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _files(ca: trustme.CA, where: Path) -> tuple[Path, Path, Path]:
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = where / "cert.pem", where / "key.pem", where / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def _gateway(
    upstream: FakeUpstream, ca: trustme.CA, where: Path, **tls: object
) -> Iterator[tuple[GatewayProcess, Path]]:
    cert, key, ca_file = _files(ca, where)
    config = base_config(upstream.url, KEYS)
    config["server"]["tls"] = {"certificate": str(cert), "key": str(key), **tls}
    with running_gateway(config, where, UPSTREAM_KEY) as process:
        yield process, ca_file


@pytest.fixture(scope="module")
def https(
    upstream: FakeUpstream, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, Path]]:
    yield from _gateway(upstream, ca, tmp_path_factory.mktemp("tls"))


def test_the_openai_client_works_over_https(https: tuple[GatewayProcess, Path]) -> None:
    gateway, ca_file = https
    assert gateway.url.startswith("https://")
    with openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(ca_file))) as http:
        client = openai.OpenAI(
            base_url=gateway.url + "/v1", api_key=KEYS.user, http_client=http, max_retries=0
        )
        reply = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.choices[0].message.content


def _port(gateway: GatewayProcess) -> int:
    return gateway.host_port[1]


def _talk(gateway: GatewayProcess, context: ssl.SSLContext) -> tuple[str, bytes]:
    """Handshake, ask for /health; the protocol version and the first bytes of the answer."""
    with (
        socket.create_connection(("127.0.0.1", _port(gateway)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return str(tls.version()), tls.recv(100)


def _handshake(gateway: GatewayProcess, context: ssl.SSLContext) -> str:
    return _talk(gateway, context)[0]


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)
def test_old_protocol_versions_are_refused(
    https: tuple[GatewayProcess, Path], version: ssl.TLSVersion
) -> None:
    gateway, ca_file = https
    with warnings.catch_warnings():  # asking for an old version is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.create_default_context(cafile=str(ca_file))
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = version
        context.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer what it is asked to
    with pytest.raises(ssl.SSLError):
        _handshake(gateway, context)


def test_tls_1_2_and_1_3_are_accepted(https: tuple[GatewayProcess, Path]) -> None:
    gateway, ca_file = https
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.create_default_context(cafile=str(ca_file))
        context.minimum_version = context.maximum_version = version
        assert _handshake(gateway, context) in ("TLSv1.2", "TLSv1.3")


def test_mutual_tls_refuses_callers_without_a_certificate(
    upstream: FakeUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    for gateway, ca_file in _gateway(upstream, ca, tmp_path, client_ca=str(tmp_path / "ca.pem")):
        without = ssl.create_default_context(cafile=str(ca_file))
        try:
            _, answer = _talk(gateway, without)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            answer = b""  # refused in the handshake (TLS 1.2) or on first use (TLS 1.3)
        assert answer == b""
        with_cert = ssl.create_default_context(cafile=str(ca_file))
        ca.issue_cert("caller@example.test").configure_cert(with_cert)
        assert _talk(gateway, with_cert)[1].startswith(b"HTTP/1.1 200")
