"""The request cycle's own ``send`` (bastion/server/cycle.py): the heads uvicorn's would
write, and the header names and values it would refuse."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from bastion.server.cycle import Cycle


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _cycle(kind: type[RequestResponseCycle], method: str = "POST") -> tuple[Any, _Transport]:
    transport = _Transport()
    scope: Any = {"method": method, "http_version": "1.1", "client": None, "path": "/"}
    done: list[bool] = []
    cycle = kind(
        scope=scope,
        transport=transport,
        flow=FlowControl(transport),
        logger=None,  # type: ignore[arg-type]
        access_logger=None,  # type: ignore[arg-type]
        access_log=False,
        default_headers=[(b"date", b"Sat, 05 Dec 2026 07:00:00 GMT")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: done.append(True),
    )
    cycle.done = done
    return cycle, transport


async def _exchange(kind: type[RequestResponseCycle], messages: list[dict[str, Any]]) -> Any:
    cycle, transport = _cycle(kind)
    try:
        for message in messages:
            await cycle.send(message)
    except RuntimeError as exc:
        return ("refused", str(exc), b"".join(transport.written))
    return (b"".join(transport.written), cycle.response_complete, cycle.done, cycle.keep_alive)


RESPONSES = [
    [
        {"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"2"),
            (b"x-ratelimit-limit-requests", b"100"), (b"x-ratelimit-reset-tokens", b"1.5s")]},
        {"type": "http.response.body", "body": b"{}"},
    ],
    [  # no length: chunked, in pieces, then the terminating chunk
        {"type": "http.response.start", "status": 200, "headers": [
            (b"Content-Type", b"text/event-stream")]},
        {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ],
    [  # the caller asked to close
        {"type": "http.response.start", "status": 404, "headers": [
            (b"connection", b"Close"), (b"content-length", b"0")]},
        {"type": "http.response.body", "body": b""},
    ],
    [{"type": "http.response.start", "status": 200, "headers": [(b"bad name", b"v")]}],
    [{"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"v\r\nx-b: 1")]}],
    [{"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"ok"), (b"x:b", b"v")]}],
    [{"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"\x00")]}],
    [  # a tab is allowed in a value
        {"type": "http.response.start", "status": 200, "headers": [
            (b"x-a", b"a\tb"), (b"content-length", b"0")]},
        {"type": "http.response.body", "body": b""},
    ],
    [  # longer than announced
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]},
        {"type": "http.response.body", "body": b"ab"},
    ],
    [{"type": "http.response.body", "body": b""}],  # no start
]  # fmt: skip


@pytest.mark.parametrize("messages", RESPONSES, ids=range(len(RESPONSES)))
def test_bastions_send_writes_and_refuses_what_uvicorns_does(
    messages: list[dict[str, Any]],
) -> None:
    ours = asyncio.run(_exchange(Cycle, messages))
    theirs = asyncio.run(_exchange(RequestResponseCycle, messages))
    assert ours == theirs


def test_a_refused_header_is_refused_before_anything_is_written() -> None:
    messages = RESPONSES[4]
    outcome = asyncio.run(_exchange(Cycle, messages))
    assert outcome == ("refused", "Invalid HTTP header value.", b"")


WHOLE = [
    (200, [(b"content-type", b"application/json"), (b"content-length", b"2")], b"{}"),
    (404, [(b"connection", b"close"), (b"content-length", b"0")], b""),
    (200, [(b"content-type", b"text/plain")], b"no length: chunked"),
]


@pytest.mark.parametrize(("status", "headers", "body"), WHOLE)
def test_respond_writes_in_one_write_what_send_writes_in_two(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    async def answered() -> tuple[Any, ...]:
        cycle, transport = _cycle(Cycle)
        assert cycle.respond(status, headers, body) is True
        return (transport.written, cycle.response_complete, cycle.done, cycle.keep_alive)

    start = {"type": "http.response.start", "status": status, "headers": headers}
    sent = asyncio.run(
        _exchange(RequestResponseCycle, [start, {"type": "http.response.body", "body": body}])
    )
    written, *rest = asyncio.run(answered())
    assert len(written) == 1
    assert (written[0], *rest) == sent
    assert rest[1] == [True]  # uvicorn's on_response ran: the connection serves the next one


def test_respond_declines_when_send_must_be_used() -> None:
    async def declined() -> list[tuple[bool, list[bytes]]]:
        outcomes = []
        started, transport = _cycle(Cycle)
        await started.send({"type": "http.response.start", "status": 200, "headers": []})
        outcomes.append((started.respond(200, [], b"x"), transport.written[1:]))
        gone, transport = _cycle(Cycle)
        gone.disconnected = True
        outcomes.append((gone.respond(200, [], b"x"), transport.written))
        full, transport = _cycle(Cycle)
        full.flow.pause_writing()  # the caller's socket buffer is full: send waits for it
        outcomes.append((full.respond(200, [], b"x"), transport.written))
        return outcomes

    assert asyncio.run(declined()) == [(False, []), (False, []), (False, [])]


def test_the_names_and_values_refused_are_those_uvicorns_expressions_match() -> None:
    from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

    async def refused(header: tuple[bytes, bytes]) -> bool:
        cycle, _ = _cycle(Cycle)
        start = {"type": "http.response.start", "status": 200, "headers": [header]}
        try:
            await cycle.send(start)
        except RuntimeError:
            return True
        return False

    for byte in range(256):
        one = bytes((byte,))
        name_refused = asyncio.run(refused((b"x" + one, b"v")))
        value_refused = asyncio.run(refused((b"x-a", b"v" + one)))
        assert name_refused == (HEADER_RE.search(one) is not None), byte
        assert value_refused == (HEADER_VALUE_RE.search(one) is not None), byte
