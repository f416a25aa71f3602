"""JSON access log for a run that used every credential kind: parseable, and no secret in it."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from pathlib import Path

import openai
import trustme

from bastion.auth.apikeys import hash_key
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Keys, base_config, running_gateway
from tests.support.tls import client_context
from tests.unit.test_htpasswd import htpasswd
from tests.unit.test_jwt import ISSUER, rsa_signer

HI = [{"role": "user", "content": "hi"}]


def _post(
    host: str, port: int, context: ssl.SSLContext, authorization: str | None
) -> tuple[int, str]:
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps({"model": "test-model", "messages": HI}),
            headers=headers,
        )
        response = conn.getresponse()
        return response.status, response.headers["x-request-id"]
    finally:
        conn.close()


def test_every_credential_kind_leaves_json_lines_without_secrets(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    keys = Keys()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, client_ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(client_ca))
    users = tmp_path / "htpasswd"
    password = "dave-password-123"
    htpasswd(users, "dave", password)
    signer = rsa_signer("log-test")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signer.jwk()]}))

    config = base_config(upstream.url, keys)
    config["server"]["tls"] = {
        "certificate": str(cert),
        "key": str(key),
        "client_ca": str(client_ca),
        "client_certificate": "optional",
    }
    config["auth"]["htpasswd"] = {"file": str(users)}
    config["auth"]["jwt"] = {"issuer": ISSUER, "audience": "bastion", "jwks_file": str(jwks)}
    config["auth"]["client_certificate"] = {"user_from": "common_name"}
    config["logging"] = {"format": "json"}

    token = signer.token(sub="erin").decode()
    basic = base64.b64encode(f"dave:{password}".encode()).decode()
    wrong_basic = base64.b64encode(b"dave:not-the-password").decode()
    wrong_key = "bst_" + "x" * 40
    person = ca.issue_cert("frank@example.org", common_name="frank")
    plain = client_context(ca)
    with_cert = client_context(ca, cert=person)
    secrets = [keys.user, keys.admin, hash_key(keys.user), hash_key(keys.admin), token,
               basic, password, wrong_basic, wrong_key, UPSTREAM_KEY]  # fmt: skip

    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        host, port = gateway.host_port
        sent = {
            "api key": _post(host, port, plain, f"Bearer {keys.user}"),
            "basic": _post(host, port, plain, f"Basic {basic}"),
            "jwt": _post(host, port, plain, f"Bearer {token}"),
            "client certificate": _post(host, port, with_cert, None),
            "wrong key": _post(host, port, plain, f"Bearer {wrong_key}"),
            "wrong password": _post(host, port, plain, f"Basic {wrong_basic}"),
        }
        with openai.DefaultHttpxClient(verify=plain) as http:  # the official client too
            client = openai.OpenAI(
                base_url=gateway.url + "/v1", api_key=keys.admin, http_client=http, max_retries=0
            )
            assert client.chat.completions.create(model="test-model", messages=HI).choices
        gateway.stop()  # flushes the log
        output = gateway.logs

    assert [status for status, _ in sent.values()] == [200, 200, 200, 200, 401, 401]
    lines = {}
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)  # every access-log line is one JSON object
            if "route" in record:  # not a log message (also JSON under logging.format: json)
                lines[record["request_id"]] = record
    principals = {kind: lines[rid]["principal"] for kind, (_, rid) in sent.items()}
    assert principals == {
        "api key": "alice",
        "basic": "dave",
        "jwt": "erin",
        "client certificate": "frank",
        "wrong key": None,
        "wrong password": None,
    }
    assert {"route", "status", "model", "latency_ms", "ttfb_ms", "upstream"} <= set(
        lines[sent["jwt"][1]]
    )
    for secret in secrets:
        assert secret not in output, "a secret reached the log"
    assert "hi" not in {str(v) for record in lines.values() for v in record.values()}
