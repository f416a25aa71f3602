"""HTTPS on the gateway's port: the openai client over TLS, old protocols refused, mTLS,
certificates replaced while the gateway runs, and client certificates as identities."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import trustme

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.support.tls import client_context, common_name, server_files, write_leaf

KEYS = Keys()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _gateway(
    upstream: FakeUpstream,
    ca: trustme.CA,
    where: Path,
    auth: dict[str, Any] | None = None,
    **tls: object,
) -> Iterator[tuple[GatewayProcess, Path]]:
    cert, key, ca_file = server_files(ca, where)
    config = base_config(upstream.url, KEYS)
    config["server"]["tls"] = {"certificate": str(cert), "key": str(key), **tls}
    config["auth"].update(auth or {})
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


def _offering(ca_file: Path, version: ssl.TLSVersion, ciphers: str | None = None,
              group: str | None = None) -> ssl.SSLContext:  # fmt: skip
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if group is not None:
        context.set_ecdh_curve(group)  # a client context offers only this group
    return context


def test_tls_1_2_cbc_suites_are_refused(https: tuple[GatewayProcess, Path]) -> None:
    """Mozilla's intermediate profile: AEAD suites only (the certificate here is ECDSA)."""
    gateway, ca_file = https
    tls12 = ssl.TLSVersion.TLSv1_2
    for cbc in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384"):
        with pytest.raises(ssl.SSLError):
            _handshake(gateway, _offering(ca_file, tls12, cbc))
    for aead in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        version, answer = _talk(gateway, _offering(ca_file, tls12, aead))
        assert (version, answer[:12]) == ("TLSv1.2", b"HTTP/1.1 200")


@pytest.mark.parametrize("name", ["TLSv1.2", "TLSv1.3"])
def test_only_the_profiles_key_exchange_groups_are_offered(
    https: tuple[GatewayProcess, Path], name: str
) -> None:
    """Mozilla's profiles: X25519, prime256v1 and secp384r1; not OpenSSL's X448 or secp521r1.
    (The certificate here is ECDSA P-256, which TLS 1.2 can use only with prime256v1 offered.)"""
    gateway, ca_file = https
    version = ssl.TLSVersion[name.replace(".", "_")]
    for refused in ("X448", "secp521r1"):
        with pytest.raises(ssl.SSLError):
            _handshake(gateway, _offering(ca_file, version, group=refused))
    accepted = ("X25519", "prime256v1", "secp384r1") if name == "TLSv1.3" else ("prime256v1",)
    for group in accepted:
        assert _handshake(gateway, _offering(ca_file, version, group=group)) == name


def test_configured_key_exchange_groups_replace_the_profiles(
    upstream: FakeUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    tls13 = ssl.TLSVersion.TLSv1_3
    for gateway, ca_file in _gateway(upstream, ca, tmp_path, groups="X448:secp384r1"):
        for accepted in ("X448", "secp384r1"):
            assert _handshake(gateway, _offering(ca_file, tls13, group=accepted)) == "TLSv1.3"
        with pytest.raises(ssl.SSLError):
            _handshake(gateway, _offering(ca_file, tls13, group="X25519"))


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


# Certificates replaced while the gateway runs


def _connect(gateway: GatewayProcess, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    connection = http.client.HTTPSConnection("127.0.0.1", _port(gateway), context=context)
    connection.connect()
    return connection


def _get(connection: http.client.HTTPSConnection, path: str = "/health") -> int:
    connection.request("GET", path)
    answer = connection.getresponse()
    answer.read()
    return answer.status


def _served(gateway: GatewayProcess, context: ssl.SSLContext) -> dict[str, Any]:
    """The certificate a new handshake gets."""
    connection = _connect(gateway, context)
    try:
        assert connection.sock is not None
        found = connection.sock.getpeercert()
        assert found is not None
        return found
    finally:
        connection.close()


def _served_name(gateway: GatewayProcess, context: ssl.SSLContext) -> str | None:
    return common_name(_served(gateway, context))


def test_a_replaced_certificate_reaches_new_handshakes_and_open_connections_stay(
    upstream: FakeUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    for gateway, _ in _gateway(upstream, ca, tmp_path, reload_interval=0.2):
        other_ca = trustme.CA()
        renewed = other_ca.issue_cert("127.0.0.1", "localhost", common_name="renewed")
        both = client_context(ca, other_ca)
        open_before = _connect(gateway, client_context(ca))
        assert _get(open_before) == 200
        socket_before = open_before.sock
        write_leaf(renewed, tmp_path / "cert.pem", tmp_path / "key.pem")
        deadline = time.monotonic() + 10
        while _served_name(gateway, both) != "renewed":
            assert time.monotonic() < deadline, f"never served the new certificate:\n{gateway.logs}"
            time.sleep(0.05)
        assert _get(open_before) == 200  # the keep-alive connection was not dropped
        assert open_before.sock is socket_before
        open_before.close()
        logs = gateway.wait_for_log("TLS certificate reloaded: now serving 'CN=renewed")
        assert "PRIVATE KEY" not in logs


def test_a_broken_replacement_keeps_the_old_certificate_serving(
    upstream: FakeUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    for gateway, _ in _gateway(upstream, ca, tmp_path, reload_interval=0.2):
        trusting = client_context(ca)
        with contextlib.closing(_connect(gateway, trusting)) as first:
            assert first.sock is not None
            served_before = first.sock.getpeercert(binary_form=True)
        stranger = ca.issue_cert("127.0.0.1", common_name="stranger")
        stranger.private_key_pem.write_to_path(str(tmp_path / "key.pem"))  # not the cert's key
        logs = gateway.wait_for_log("still serving the previous certificate")
        assert f"{tmp_path / 'key.pem'} is not the key of the first certificate" in logs
        assert "PRIVATE KEY" not in logs
        with contextlib.closing(_connect(gateway, trusting)) as after:
            assert after.sock is not None
            assert after.sock.getpeercert(binary_form=True) == served_before
            assert _get(after) == 200


# Client certificates as identities (mutual TLS with auth.client_certificate)


@pytest.fixture(scope="module")
def mtls(
    upstream: FakeUpstream, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    where = tmp_path_factory.mktemp("mtls")
    auth = {"client_certificate": {"admins": ["ops"]}}
    for gateway, _ in _gateway(upstream, ca, where, auth, client_ca=str(where / "ca.pem")):
        yield gateway


def _caller(ca: trustme.CA, name: str | None) -> ssl.SSLContext:
    """A client context presenting a certificate of ``ca`` with this common name."""
    return client_context(ca, cert=ca.issue_cert(f"{name}@example.test", common_name=name))


CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


def test_a_client_certificate_names_a_caller_that_sends_no_api_key(
    mtls: GatewayProcess, ca: trustme.CA
) -> None:
    with openai.DefaultHttpxClient(verify=_caller(ca, "carol")) as http:
        answer = http.post(mtls.url + "/v1/chat/completions", json=CHAT)
        assert "authorization" not in answer.request.headers
        assert answer.status_code == 200, answer.text
        assert http.get(mtls.url + "/admin/v1/whoami").status_code == 403  # a user
    logs = mtls.wait_for_log('"POST /v1/chat/completions" 200 model=test-model principal=carol ')
    assert "principal=carol" in logs


def test_an_admin_certificate_reaches_the_admin_api(mtls: GatewayProcess, ca: trustme.CA) -> None:
    with openai.DefaultHttpxClient(verify=_caller(ca, "ops")) as http:
        answer = http.get(mtls.url + "/admin/v1/whoami")
    assert answer.status_code == 200, answer.text
    assert answer.json()["principal"] == "ops"
    assert answer.json()["credential"].startswith("certificate:")


def test_an_api_key_decides_over_the_certificate(mtls: GatewayProcess, ca: trustme.CA) -> None:
    with openai.DefaultHttpxClient(verify=_caller(ca, "carol")) as http:
        client = openai.OpenAI(
            base_url=mtls.url + "/v1", api_key=KEYS.user, http_client=http, max_retries=0
        )
        reply = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert reply.choices[0].message.content
        as_admin = http.get(
            mtls.url + "/admin/v1/whoami", headers={"Authorization": f"Bearer {KEYS.admin}"}
        )
        assert as_admin.status_code == 200 and as_admin.json()["principal"] == "root"
    mtls.wait_for_log("principal=alice")
    with openai.DefaultHttpxClient(verify=_caller(ca, "ops")) as http:
        for key, status in ((KEYS.user, 403), ("bst_not-a-key", 401)):
            answer = http.get(
                mtls.url + "/admin/v1/whoami", headers={"Authorization": f"Bearer {key}"}
            )
            assert answer.status_code == status, answer.text


def test_a_certificate_without_a_common_name_is_refused(
    mtls: GatewayProcess, ca: trustme.CA
) -> None:
    nameless = client_context(ca, cert=ca.issue_cert("nameless@example.test"))
    with openai.DefaultHttpxClient(verify=nameless) as http:
        answer = http.post(mtls.url + "/v1/chat/completions", json=CHAT)
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "authentication_error"
    mtls.wait_for_log("client certificate refused: the certificate has no common name")
