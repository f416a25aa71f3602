"""TLS helpers for tests: certificate files from trustme, and handshakes in memory."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import trustme


def server_files(ca: trustme.CA, where: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1 and localhost issued by ``ca``, its key and the CA's
    certificate, written in ``where``."""
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = where / "cert.pem", where / "key.pem", where / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def write_leaf(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    """Write a certificate chain and its key the way an operator replaces them: each file
    written aside, then renamed over the old one."""
    for path, blobs in ((key, [leaf.private_key_pem]), (cert, leaf.cert_chain_pems)):
        aside = path.with_name(path.name + ".new")
        aside.write_bytes(b"".join(blob.bytes() for blob in blobs))
        os.replace(aside, path)


def client_context(*cas: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client context trusting ``cas``, presenting ``cert`` if given."""
    context = ssl.create_default_context()
    for ca in cas:
        ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_name: str = "127.0.0.1"
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run a handshake between the two contexts in memory; the certificate the client saw
    and the one the server verified (None if the client presented none).

    Raises ssl.SSLError when either side refuses.
    """
    client_side, server_side = _connected(server, client, server_name)
    seen = client_side.getpeercert()
    assert seen is not None
    return seen, server_side.getpeercert() or None


def negotiated(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str, str]:
    """The protocol version and cipher suite of an in-memory handshake; raises ssl.SSLError
    when either side refuses."""
    client_side, _ = _connected(server, client, "127.0.0.1")
    cipher = client_side.cipher()
    assert cipher is not None
    return cipher[1], cipher[0]


def _connected(
    server: ssl.SSLContext, client: ssl.SSLContext, server_name: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    client_side = client.wrap_bio(to_client, to_server, server_hostname=server_name)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client_side), ("server", server_side)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        if all(done.values()):
            # TLS 1.3: the server checks the client's certificate after its own last flight,
            # so a refusal reaches the client only on its first read.
            server_side.write(b"x")
            client_side.read(1)
            return client_side, server_side
    raise AssertionError("the handshake did not finish")


def common_name(certificate: dict[str, Any]) -> str | None:
    """The subject's common name, as ``getpeercert()`` decodes it; None if it has none."""
    return next((v for rdn in certificate["subject"] for k, v in rdn if k == "commonName"), None)
