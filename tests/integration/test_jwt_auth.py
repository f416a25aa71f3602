"""JWT bearer tokens through the running gateway, with the official openai client as caller."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest

from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.unit.test_jwt import ISSUER, Signer, ec_signer, rsa_signer

SIGNERS = [rsa_signer("gw-rsa"), ec_signer("gw-ec")]


class _Jwks(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"keys": [s.jwk() for s in SIGNERS]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def jwt_gateway(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    jwks = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    thread = threading.Thread(target=jwks.serve_forever, daemon=True)
    thread.start()
    state = tmp_path_factory.mktemp("state-jwt")
    config = base_config(upstream.url, keys)
    config["auth"]["jwt"] = {
        "issuer": ISSUER,
        "audience": "bastion",
        "jwks_url": f"http://127.0.0.1:{jwks.server_address[1]}/jwks",
    }
    with running_gateway(config, Path(state)) as process:
        yield process
    jwks.shutdown()
    jwks.server_close()


@pytest.mark.parametrize("signer", SIGNERS, ids=["RS256", "ES256"])
def test_openai_client_with_a_jwt(
    jwt_gateway: GatewayProcess, upstream: FakeUpstream, signer: Signer
) -> None:
    token = signer.token(sub="carol").decode()
    reply = openai_client(jwt_gateway.url, token).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "Hello from upstream"
    assert upstream.seen[-1].headers["authorization"] == "Bearer k"
    assert token not in jwt_gateway.wait_for_log("principal=carol")


def test_expired_or_foreign_tokens_are_401(
    jwt_gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    for token in (
        SIGNERS[0].token(exp=1),
        SIGNERS[0].token(aud="other"),
        rsa_signer("gw-rsa").token(),
    ):
        with pytest.raises(openai.AuthenticationError):
            openai_client(jwt_gateway.url, token.decode()).models.list()
    assert upstream.seen == []
