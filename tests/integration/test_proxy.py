"""The gateway in front of a fake vLLM: forwarding, streaming, disconnects, upstream failures."""

from __future__ import annotations

import itertools
import re
import socket
import threading
import time

import openai
import orjson
import pytest

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys

_ID = "X-Request-Id: %s\r\n"


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai_client(gateway.url, key)


def raw_request(gateway: GatewayProcess, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the gateway answered until it closed or went idle."""
    with socket.create_connection(gateway.host_port, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return body.endswith(b"0\r\n\r\n")


def post(
    path: str, key: str, body: dict[str, object], extra: str = "", *, close: bool = True
) -> bytes:
    payload = orjson.dumps(body)
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{extra}"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    ).encode() + payload


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response from a kept-alive connection: its head, and its body (chunks undone).
    Fails if the connection closes before the response is complete."""
    data = b""

    def more() -> None:
        nonlocal data
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the connection closed mid-response after {data!r}")
        data += chunk

    while b"\r\n\r\n" not in data:
        more()
    head, _, data = data.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    if b"content-length" in fields:
        while len(data) < int(fields[b"content-length"]):
            more()
        return head, data
    assert fields.get(b"transfer-encoding") == b"chunked", head
    body = b""
    while True:
        while b"\r\n" not in data:
            more()
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        while len(data) < size + 2:
            more()
        body, data = body + data[:size], data[size + 2 :]
        if size == 0:
            assert data == b"", data  # nothing after the final chunk
            return head, body


def test_chat_completion_is_forwarded_with_upstream_key_only(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    reply = client(gateway, keys.user).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "Hello from upstream"
    [seen] = upstream.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert keys.user not in str(seen.headers)
    assert seen.headers["host"] == upstream.url.removeprefix("http://")
    assert orjson.loads(seen.body)["messages"] == [{"role": "user", "content": "hi"}]


def test_completion_is_forwarded(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    reply = client(gateway, keys.user).completions.create(model="test-model", prompt="Say")
    assert reply.choices[0].text == "Hello text"
    assert upstream.seen[0].path == "/v1/completions"


def test_streaming_chat_relays_every_event(gateway: GatewayProcess, keys: Keys) -> None:
    stream = client(gateway, keys.user).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices]
    assert pieces == ["tok0 ", "tok1 ", "tok2 "]


def test_streaming_completion_relays_every_event(gateway: GatewayProcess, keys: Keys) -> None:
    stream = client(gateway, keys.user).completions.create(
        model="test-model", prompt="x", stream=True
    )
    assert [c.choices[0].text for c in stream] == ["tok0 ", "tok1 ", "tok2 "]


def test_first_event_arrives_before_upstream_finishes(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    release = threading.Event()
    upstream.behaviour.hold_after_first = release
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with socket.create_connection(gateway.host_port, timeout=5) as sock:
        sock.sendall(post("/v1/chat/completions", keys.user, body))
        received = b""
        while b"tok0" not in received:
            received += sock.recv(65536)
        assert upstream.stream_finished == []  # the upstream is still holding its stream
        release.set()
        while b"[DONE]" not in received:
            received += sock.recv(65536)
    assert b"tok1" in received


def test_caller_disconnect_closes_upstream_request(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    upstream.behaviour.hold_after_first = threading.Event()  # never released
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
    sock = socket.create_connection(gateway.host_port, timeout=5)
    sock.sendall(post("/v1/chat/completions", keys.user, body))
    received = b""
    while b"tok0" not in received:
        received += sock.recv(65536)
    sock.close()
    closed_at = time.monotonic()
    deadline = closed_at + 1.0
    while not upstream.disconnects and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstream.disconnects, "the upstream request was not closed within one second"
    assert upstream.disconnects[0] - closed_at < 1.0
    assert upstream.stream_finished == []


def test_slow_caller_pushes_back_on_the_upstream(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    total = 64 * 65536 * 16  # 64 MiB
    upstream.behaviour.flood_bytes = total
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with socket.create_connection(gateway.host_port, timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(post("/v1/chat/completions", keys.user, body))
        time.sleep(1.5)  # read nothing: the gateway must stop reading the upstream
        assert 0 < upstream.flood_sent < total // 4
        received = 0
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    assert upstream.flood_sent >= total
    assert received > upstream.flood_sent  # every byte arrived, plus the chunked framing


def test_stalled_stream_ends_with_an_error_event(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    upstream.behaviour.hold_after_first = threading.Event()  # the upstream goes silent
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
    started = time.monotonic()
    answer = raw_request(gateway, post("/v1/chat/completions", keys.user, body), timeout=5)
    assert answer.startswith(b"HTTP/1.1 200 ")
    events = [line for line in answer.split(b"\r\n") if line.startswith(b"data: ")]
    assert b"tok0" in events[0]
    error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_timeout"
    assert answer.endswith(b"0\r\n\r\n")  # the stream was ended properly
    assert 1.0 <= time.monotonic() - started < 3.0


def test_a_model_whose_upstream_is_down_answers_503_at_once(
    gateway: GatewayProcess, keys: Keys
) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway, keys.user).chat.completions.create(
            model="down-model", messages=[{"role": "user", "content": "x"}]
        )
    assert time.monotonic() - started < 0.5
    assert caught.value.status_code == 503  # the health check found it down at start
    assert caught.value.body["code"] == "no_healthy_upstream"  # type: ignore[index]
    assert caught.value.response.headers["retry-after"].isdigit()
    assert "127.0.0.1" not in caught.value.response.text


def test_slow_upstream_is_504(gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys) -> None:
    upstream.behaviour.delay = 2.0
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway, keys.user).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"  # type: ignore[index]
    assert time.monotonic() - started < 1.9


def test_upstream_model_name_is_rewritten(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    client(gateway, keys.user).chat.completions.create(
        model="renamed", messages=[{"role": "user", "content": "x"}]
    )
    sent = orjson.loads(upstream.seen[0].body)
    assert sent["model"] == "real-name"
    assert "authorization" not in upstream.seen[0].headers


def test_the_callers_request_id_is_echoed_never_forwarded(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    """The upstream only sees Bastion's own unguessable ids (a guessed id lets one caller
    reach into another's work in vLLM); the caller gets its own id back."""
    body = {"model": "test-model", "messages": []}
    answer = raw_request(
        gateway, post("/v1/chat/completions", keys.user, body, "X-Request-Id: abc-123\r\n")
    )
    assert b"x-request-id: abc-123" in answer
    sent = upstream.seen[-1].headers["x-request-id"]
    assert sent != "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", sent)  # 128 random bits
    answer = raw_request(
        gateway, post("/v1/chat/completions", keys.user, body, "X-Request-Id: bad id;<script>\r\n")
    )
    assert b"bad id" not in answer
    assert b"x-request-id: " in answer
    assert upstream.seen[-1].headers["x-request-id"] != "bad id;<script>"


def test_request_ids_sent_upstream_are_unrelated(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    """No counter: two consecutive ids share no more than chance would give them."""
    body = {"model": "test-model", "messages": []}
    ids = []
    for _ in range(20):
        raw_request(gateway, post("/v1/chat/completions", keys.user, body))
        ids.append(int(upstream.seen[-1].headers["x-request-id"], 16))
    assert len(set(ids)) == 20
    # consecutive ids differ in about half of their 128 bits, never in a handful
    assert min(bin(a ^ b).count("1") for a, b in itertools.pairwise(ids)) > 30


def test_hop_by_hop_and_credentials_not_forwarded(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    extra = "Cookie: session=1\r\nX-Api-Key: sekret\r\nX-Custom: yes\r\nTE: trailers\r\n"
    raw_request(gateway, post("/v1/chat/completions", keys.user, {"model": "test-model"}, extra))
    headers = upstream.seen[-1].headers
    assert headers["x-custom"] == "yes"
    for name in ("cookie", "x-api-key", "te"):
        assert name not in headers


def test_upstream_server_header_is_not_relayed(gateway: GatewayProcess, keys: Keys) -> None:
    answer = raw_request(gateway, post("/v1/chat/completions", keys.user, {"model": "test-model"}))
    assert b"fake-vllm" not in answer
    assert b"x-upstream-secret-header: kept" in answer


def test_multipart_audio_routes_by_form_model(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    result = client(gateway, keys.user).audio.transcriptions.create(
        model="test-model", file=("a.wav", b"RIFF....WAVE", "audio/wav")
    )
    assert result is not None
    assert upstream.seen[-1].path == "/v1/audio/transcriptions"
    assert b"RIFF....WAVE" in upstream.seen[-1].body


def test_omitted_model_is_400_when_several_are_served(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    answer = raw_request(gateway, post("/tokenize", keys.user, {"prompt": "x"}))
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"param":"model"' in answer
    assert upstream.seen == []


def test_a_stream_cut_by_the_upstream_ends_well_and_the_connection_stays_usable(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    upstream.behaviour.cut_after = 2  # two events, then the upstream's socket closes
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with socket.create_connection(gateway.host_port, timeout=5) as sock:
        sock.sendall(post("/v1/chat/completions", keys.user, body, _ID % "cut-1", close=False))
        head, stream = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        events = stream.split(b"\n\n")
        assert b"tok0" in events[0] and b"tok1" in events[1]
        error = orjson.loads(events[2].removeprefix(b"data: "))["error"]
        assert (error["type"], error["code"]) == ("upstream_error", "upstream_protocol_error")
        assert events[3:] == [b""]  # the error event is the last, and whole
        # the same connection serves the next request
        upstream.behaviour.cut_after = None
        sock.sendall(post("/v1/chat/completions", keys.user, {"model": "test-model"}, close=False))
        head, answer = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert orjson.loads(answer)["choices"][0]["message"]["content"] == "Hello from upstream"
    logs = gateway.wait_for_log("caller_request_id=cut-1")
    assert "Traceback" not in logs
    [line] = [line for line in logs.splitlines() if "request_id=cut-1" in line]
    assert " WARNING " in line
    assert "upstream=" in line and "upstream_protocol_error" in line
