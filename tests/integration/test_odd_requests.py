"""Requests no OpenAI client sends: CONNECT and other odd methods, request targets that are
not a path (absolute-form, asterisk-form, authority-form), the HTTP/2 preface and protocol
upgrades. Each gets a quiet 4xx with an OpenAI error body, none reaches the upstream, and
the gateway's log shows no traceback."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import orjson
import pytest

from tests.integration.test_proxy import raw_request
from tests.integration.test_security import CHAT, status_of
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys


def _request(method: str, target: str, upgrade: str | None = None) -> Callable[[str], bytes]:
    """A request of ``method`` for ``target``; the returned function takes the header lines
    to add (a credential, a request id)."""
    extra = f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n" if upgrade else ""

    def build(headers: str) -> bytes:
        if method != "POST":
            return f"{method} {target} HTTP/1.1\r\nHost: gw\r\n{headers}{extra}\r\n".encode()
        body = orjson.dumps(CHAT)
        return (
            f"POST {target} HTTP/1.1\r\nHost: gw\r\n{headers}{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    return build


# name, request, status, whether the application answers it (with the route table's 404/405)
ODD: list[tuple[str, Callable[[str], bytes], int, bool]] = [
    ("connect", _request("CONNECT", "example.com:443"), 405, False),
    ("connect-to-a-path", _request("CONNECT", "/v1/models"), 405, False),
    ("trace", _request("TRACE", "/v1/chat/completions"), 405, True),
    ("trace-root", _request("TRACE", "/"), 404, True),
    ("http2-preface", lambda headers: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, False),
    ("asterisk-form", _request("OPTIONS", "*"), 400, False),
    ("absolute-form", _request("GET", "http://gw/v1/models"), 400, False),
    ("absolute-form-without-path", _request("GET", "http://gw"), 400, False),
    ("absolute-form-bad-port", _request("GET", "http://gw:99999/v1/models"), 400, False),
    ("absolute-form-no-host", _request("GET", "http://"), 400, False),
    ("other-scheme", _request("GET", "ftp://gw/v1/models"), 400, False),
    ("websocket-upgrade", _request("GET", "/v1/models", upgrade="websocket"), 501, False),
    ("h2c-upgrade", _request("POST", "/v1/chat/completions", upgrade="h2c"), 400, False),
]


def _settled(gateway: GatewayProcess) -> str:
    """The gateway's output once everything it logged for earlier requests is in it: a
    request that comes later is logged later."""
    marker = uuid.uuid4().hex
    raw_request(gateway, _request("GET", "/health")(f"X-Request-Id: {marker}\r\n"))
    return gateway.wait_for_log(marker)


@pytest.mark.parametrize(("name", "request_of", "status", "app"), ODD, ids=[c[0] for c in ODD])
@pytest.mark.parametrize("credential", [False, True], ids=["anonymous", "with-key"])
def test_odd_requests_get_a_quiet_4xx(
    gateway: GatewayProcess,
    upstream: FakeUpstream,
    keys: Keys,
    name: str,
    request_of: Callable[[str], bytes],
    status: int,
    app: bool,
    credential: bool,
) -> None:
    before = _settled(gateway)
    request_id = uuid.uuid4().hex
    headers = f"X-Request-Id: {request_id}\r\n"
    if credential:
        headers += f"Authorization: Bearer {keys.user}\r\n"
    answer = raw_request(gateway, request_of(headers))
    assert answer.startswith(b"HTTP/1.1 "), answer
    kind = "invalid_request_error"
    if status == 405 and app and not credential:  # no 405 for a stranger: 401 first
        status, kind = 401, "authentication_error"
    assert status_of(answer) == status, answer
    body = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["error"]["type"] == kind
    after = _settled(gateway)[len(before) :]
    assert "Traceback" not in after
    assert " ERROR " not in after and " WARNING " not in after
    assert (request_id in after) is app  # refused before the application saw it, or answered
    assert upstream.seen == []
