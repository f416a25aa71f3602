"""Rate limits, token reservations, budgets, concurrency and priority on a running gateway."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import openai
import pytest

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

USERS = ("rpm", "tpm", "tpm2", "budget", "conc", "free", "spender", "floats")
KEYS = {name: generate_key() for name in USERS}
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(upstream.url, Keys(), upstream={"read_timeout": 1.0})
    config["auth"] = {
        "api_keys": [{"name": n, "hash": hash_key(k), "role": "user"} for n, k in KEYS.items()]
    }
    config["limits"] = {
        "users": {
            "rpm": {"requests_per_minute": 3},
            "tpm": {"tokens_per_minute": 100},
            "tpm2": {"tokens_per_minute": 120},
            "budget": {"tokens_per_day": 65},
            "conc": {"concurrency": 1, "tokens_per_minute": 100_000},
            "spender": {"cost_per_day": 0.1},
            "floats": {"tokens_per_minute": 100},
        },
        "priority": {"roles": {"user": 5}},
    }
    config["usage"] = {"prices": {"test-model": {"input": 1000, "output": 1000}}}  # 0.001/token
    with running_gateway(config, tmp_path_factory.mktemp("limits"), UPSTREAM_KEY) as process:
        yield process


def chat(gateway: GatewayProcess, user: str, **extra: object) -> str:
    client = openai_client(gateway.url, KEYS[user])
    reply = client.chat.completions.create(model="test-model", messages=CHAT, **extra)  # type: ignore[call-overload]
    return reply.choices[0].message.content or ""


def raw_chat(
    gateway: GatewayProcess, user: str, body: dict[str, object]
) -> tuple[int, dict[str, str], dict[str, object]]:
    host, port = gateway.host_port
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body),
            {"Authorization": f"Bearer {KEYS[user]}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        data = json.loads(response.read() or b"{}")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def test_a_spending_budget_admits_what_it_can_pay_for(gateway: GatewayProcess) -> None:
    body: dict[str, object] = {"model": "test-model", "max_tokens": 10, "messages": CHAT}
    estimate = len(json.dumps(body)) // 4 + 1  # the gateway's prompt estimate, in tokens
    reserved = (estimate + 10) * 1000  # millionths, at 0.001 per token
    used = 8 * 1000  # the fake upstream reports 5 + 3 tokens
    budget = 100_000  # 0.1
    expected = next(n for n in range(100) if n * used + reserved > budget)
    statuses = [raw_chat(gateway, "spender", body)[0] for _ in range(expected + 1)]
    assert statuses == [200] * expected + [429]
    status, _, data = raw_chat(gateway, "spender", body)
    assert data["error"]["code"] == "insufficient_quota"  # type: ignore[index]
    big: dict[str, object] = {**body, "max_tokens": 200}  # could never fit 0.1 at 0.001/token
    status, _, data = raw_chat(gateway, "spender", big)
    assert (status, data["error"]["code"]) == (400, "cost_exceeds_budget")  # type: ignore[index]


def test_requests_per_minute_refuse_with_openai_headers(gateway: GatewayProcess) -> None:
    for _ in range(3):
        assert chat(gateway, "rpm")
    with pytest.raises(openai.RateLimitError) as refused:
        chat(gateway, "rpm")
    headers = refused.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert 1 <= int(headers["retry-after"]) <= 20  # one request every 20 s
    assert refused.value.code == "rate_limit_exceeded"
    assert chat(gateway, "free")  # other callers are not affected


def test_successful_responses_carry_the_headers_too(gateway: GatewayProcess) -> None:
    status, headers, _ = raw_chat(
        gateway, "tpm", {"model": "test-model", "messages": CHAT, "max_tokens": 10}
    )
    assert status == 200
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 100


def test_a_request_that_could_never_fit_is_400(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        chat(gateway, "tpm", max_tokens=500)
    assert refused.value.code == "tokens_exceed_limit"


@pytest.mark.parametrize("max_tokens", [5e9, 2147483648.0, 500.0])
def test_a_float_max_tokens_counts_as_the_same_integer(
    gateway: GatewayProcess, upstream: FakeUpstream, max_tokens: float
) -> None:
    # the engine reads 5e9 as 5000000000 (pydantic reads an integral float as an int)
    with pytest.raises(openai.BadRequestError) as refused:
        chat(gateway, "floats", max_tokens=max_tokens)
    assert refused.value.code == "tokens_exceed_limit"
    assert upstream.seen == []
    status, _, _ = raw_chat(
        gateway, "floats", {"model": "test-model", "messages": CHAT, "max_tokens": 20.0}
    )
    assert status == 200  # 20 tokens reserved, not the default 1024 (which never fits 100)
    assert len(upstream.seen) == 1


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("max_tokens", 5.5, "invalid_type"),
        ("max_completion_tokens", -1, "integer_below_min_value"),
        ("max_tokens", "5000000000", "invalid_type"),
        ("max_tokens", True, "invalid_type"),
        ("n", 0, "integer_below_min_value"),
        ("stream", "true", "invalid_type"),
    ],
)
def test_a_field_the_gateway_cannot_read_as_the_engine_would_is_400_and_not_forwarded(
    gateway: GatewayProcess, upstream: FakeUpstream, field: str, value: object, code: str
) -> None:
    body = {"model": "test-model", "messages": CHAT, field: value}
    status, _, data = raw_chat(gateway, "floats", body)
    assert status == 400
    error = data["error"]
    assert error["type"] == "invalid_request_error"  # type: ignore[index]
    assert (error["param"], error["code"]) == (field, code)  # type: ignore[index]
    assert upstream.seen == []


def test_budget_reservations_are_reconciled_with_reported_usage(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    # this body (97 bytes) is estimated at 25 prompt tokens; with max_tokens 30 each request
    # reserves 55 of the 65-token budget. The fake upstream reports 8 tokens used.
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x" * 9}],
            "max_tokens": 30}  # fmt: skip
    assert len(json.dumps(body)) // 4 + 1 == 25
    assert raw_chat(gateway, "budget", body)[0] == 200  # used: 8
    assert raw_chat(gateway, "budget", body)[0] == 200  # 8 + 55 <= 65: only with reconciling
    status, headers, data = raw_chat(gateway, "budget", body)  # 16 + 55 > 65
    assert status == 429
    assert data["error"]["code"] == "insufficient_quota"  # type: ignore[index]
    assert int(headers["retry-after"]) >= 1


def test_streams_ask_for_usage_and_hide_it_from_callers_who_did_not(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    upstream.behaviour.events = 4
    client = openai_client(gateway.url, KEYS["tpm"])
    chunks = list(
        client.chat.completions.create(model="test-model", messages=CHAT, stream=True, max_tokens=8)
    )
    assert [c.usage for c in chunks] == [None] * len(chunks)
    assert json.loads(upstream.seen[-1].body)["stream_options"] == {"include_usage": True}
    asked = list(
        client.chat.completions.create(
            model="test-model",
            messages=CHAT,
            stream=True,
            max_tokens=8,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 4


def test_concurrent_streams_admitted_fit_the_token_limit(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    # each stream reserves about 23 (its 90-byte body) + 30 tokens of the 120 per minute: two
    # fit at once, a third does not (and the bucket refills only 2 tokens a second)
    release = threading.Event()
    upstream.behaviour.hold_after_first = release
    results: list[str] = []

    def one() -> None:
        try:
            stream = openai_client(gateway.url, KEYS["tpm2"]).chat.completions.create(
                model="test-model", messages=CHAT, stream=True, max_tokens=30
            )
            for _ in stream:
                pass
            results.append("ok")
        except openai.RateLimitError:
            results.append("429")

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    release.set()
    for thread in threads:
        thread.join(10)
    assert results.count("ok") == 2, results
    assert results.count("429") == 4
    # the two streams reported 8 tokens each; their 2 x 53 reserved came back but for those
    # 16, so a third request fits now, and the bucket says so
    status, headers, _ = raw_chat(
        gateway, "tpm2", {"model": "test-model", "messages": CHAT, "max_tokens": 30}
    )
    assert status == 200
    assert 120 - 16 - 60 <= int(headers["x-ratelimit-remaining-tokens"]) <= 120 - 16 - 40


def test_the_caller_cannot_set_its_own_priority(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    assert chat(gateway, "free", extra_body={"priority": -100})
    assert json.loads(upstream.seen[-1].body)["priority"] == 5


def _held_stream(gateway: GatewayProcess) -> socket.socket:
    """Start a stream as user 'conc' and return its socket once the first event arrived."""
    host, port = gateway.host_port
    sock = socket.create_connection((host, port), timeout=5)
    body = json.dumps({"model": "test-model", "messages": CHAT, "stream": True}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEYS['conc']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = b""
    while b"data:" not in received:
        received += sock.recv(65536)
    return sock


def _slot_free_within(gateway: GatewayProcess, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chat(gateway, "conc")
            return True
        except openai.RateLimitError:
            time.sleep(0.05)
    return False


def test_concurrency_slot_is_released_when_the_caller_disconnects(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    release = threading.Event()
    upstream.behaviour.hold_after_first = release
    sock = _held_stream(gateway)
    with pytest.raises(openai.RateLimitError):
        chat(gateway, "conc")  # the held stream has the only slot
    sock.close()
    try:
        assert _slot_free_within(gateway, 2.0)
    finally:
        release.set()


def test_concurrency_slot_is_released_after_upstream_error_and_timeout(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    upstream.behaviour.status = 500
    with pytest.raises(openai.InternalServerError):
        chat(gateway, "conc")
    upstream.behaviour.status = 200
    assert _slot_free_within(gateway, 1.0)
    upstream.behaviour.delay = 1.5  # past the gateway's 1 s read timeout
    with pytest.raises(openai.APIStatusError) as timed_out:
        chat(gateway, "conc")
    assert timed_out.value.status_code == 504
    upstream.behaviour.delay = 0.0
    assert _slot_free_within(gateway, 1.0)
