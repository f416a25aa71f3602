"""An upstream that dies mid-stream: the caller's stream ends with one error event, properly.

Under a plain ASGI harness (no Bastion server: the body is pumped through ``send``), so every
message the gateway sends is seen.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from bastion.app import Services, build_gateway
from bastion.auth.apikeys import ApiKeyRecord, generate_key, hash_key
from bastion.settings import ModelSettings, UpstreamTarget, parse_settings
from bastion.upstream.client import UpstreamPool
from tests.support.asgi import post_scope

EVENT = b'data: {"choices":[{"index":0,"text":"a"}]}\n\n'


async def run_cut_stream(sent_before_cut: bytes) -> list[dict[str, Any]]:
    """A streamed completion whose upstream sends ``sent_before_cut``, then closes its
    socket; returns the ASGI messages the gateway sent."""

    async def dying_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%b\r\n" % (len(sent_before_cut), sent_before_cut))
        await writer.drain()
        writer.close()  # no final chunk: the body is cut

    server = await asyncio.start_server(dying_upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = parse_settings({})
    key = generate_key()
    pool = UpstreamPool(settings.upstream)
    services = Services(settings, keys=[ApiKeyRecord("a", hash_key(key), "user")], pool=pool)
    model = ModelSettings(name="m", upstreams=(UpstreamTarget(url=f"http://127.0.0.1:{port}"),))
    gateway = build_gateway(settings, services, (model,))
    body = b'{"model": "m", "prompt": "x", "stream": true}'
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the caller stays
        raise AssertionError

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = post_scope("/v1/completions", key, (b"x-request-id", b"cut-7"))
    try:
        async with asyncio.timeout(5):
            await gateway(scope, receive, send)
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()
    return sent


def sse_data(stream: bytes) -> list[bytes]:
    """The data of each event an SSE parser dispatches (blank lines end events; an empty
    one dispatches nothing; an unfinished one at the end is dropped)."""
    events, data = [], []
    for line in stream.split(b"\n"):
        if not line:
            if data:
                events.append(b"\n".join(data))
            data = []
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
    return events


A = orjson.loads(EVENT[6:])


@pytest.mark.parametrize(
    ("sent_before_cut", "relayed"),
    [
        (EVENT + EVENT, [A, A]),  # cut between events
        (EVENT + b'data: {"choi', [A, b'{"choi']),  # cut inside an event: it is lost
        (EVENT + b"data: [1]\n", [A, [1]]),  # cut inside an event, after a line
    ],
    ids=["between-events", "mid-line", "mid-event"],
)
async def test_the_stream_ends_with_one_error_event_of_its_own_and_nothing_after(
    sent_before_cut: bytes, relayed: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bastion")
    sent = await run_cut_stream(sent_before_cut)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = sent[1:]
    assert all(m["type"] == "http.response.body" for m in bodies)
    # every message but the last says more is coming; the last ends the body, once
    assert [m.get("more_body", False) for m in bodies] == [True] * (len(bodies) - 1) + [False]
    stream = b"".join(m["body"] for m in bodies)
    assert stream.endswith(b"\n\n")
    *events, last = sse_data(stream)
    assert [e if e == b'{"choi' else orjson.loads(e) for e in events] == relayed
    error = orjson.loads(last)["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_protocol_error")
    [record] = [r for r in caplog.records if r.name == "bastion"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "caller_request_id=cut-7" in record.getMessage()
    assert "reason=upstream_protocol_error" in record.getMessage()


async def test_an_event_stream_cut_on_a_blank_line_gets_no_blank_line_added() -> None:
    sent = await run_cut_stream(EVENT)
    stream = b"".join(m["body"] for m in sent[1:])
    assert stream.startswith(EVENT + b"data: {")
