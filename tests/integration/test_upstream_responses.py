"""Responses no model server should send, through a real gateway: each is the upstream's
fault, a 502 that relays nothing of it, counted against the upstream."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.support.raw_upstream import RawUpstream

KEYS = Keys()
BODY = b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[RawUpstream]:
    upstream = RawUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(
    raw_upstream: RawUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(
        raw_upstream.url,
        KEYS,
        upstream={"retries": 0, "read_timeout": 10, "ejection": {"failures": 0}},
    )
    with running_gateway(config, tmp_path_factory.mktemp("state")) as process:
        yield process


def _post(gateway: GatewayProcess) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        gateway.url + "/v1/chat/completions",
        data=BODY,
        headers={"Authorization": f"Bearer {KEYS.user}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, dict(refused.headers), refused.read()


def _metrics(gateway: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    request = urllib.request.Request(
        gateway.url + "/bastion/metrics", headers={"Authorization": f"Bearer {KEYS.admin}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 600 X\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.1 999 Nonsense\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 1_000_000 + b"\r\ncontent-length: 2\r\n\r\nhi",
    ],
    ids=["600", "999", "1MB-header"],
)
def test_an_invalid_upstream_response_is_a_502(
    gateway: GatewayProcess, raw_upstream: RawUpstream, reply: bytes
) -> None:
    label = (("upstream", f"127.0.0.1:{raw_upstream.port}"),)
    before = _metrics(gateway).get(("bastion_upstream_failures_total", label), 0.0)
    requests = ("bastion_requests_total", (("code", "5xx"), ("model", "test-model"),
                ("route", "/v1/chat/completions")))  # fmt: skip
    errors_before = _metrics(gateway).get(requests, 0.0)
    raw_upstream.reply = reply
    status, headers, body = _post(gateway)
    assert status == 502
    error = orjson.loads(body)["error"]
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_protocol_error"
    assert "x-big" not in {name.lower() for name in headers}
    assert len(body) < 1000
    samples = _metrics(gateway)
    assert samples[("bastion_upstream_failures_total", label)] == before + 1
    assert samples[requests] == errors_before + 1
    assert "Traceback" not in gateway.logs
