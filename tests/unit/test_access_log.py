from __future__ import annotations

import asyncio
import io

import orjson
import pytest

from bastion.auth.identity import Identity
from bastion.errors import ModelNotFoundError
from bastion.observability.access_log import AccessLogWriter, Record, format_json, format_text
from bastion.pipeline.account import Account
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import EndpointTable
from bastion.pipeline.meter import Meter
from bastion.settings import LoggingSettings


async def _noop_receive() -> dict[str, object]:
    return {}


async def _noop_send(message: object) -> None:
    return None


def served_context() -> RequestContext:
    scope = {"type": "http", "method": "POST", "client": ("10.0.0.1", 5), "headers": []}
    ctx = RequestContext(scope, _noop_receive, _noop_send)
    ctx.request_id = "rid-1"
    ctx.endpoint = EndpointTable().match(b"/v1/chat/completions")
    ctx.model = "m"
    ctx.identity = Identity("alice", "user", "alice", "api_key")
    ctx.upstream = "10.0.0.5:8000"
    ctx.status = 200
    ctx.response_done = True
    return ctx


class Sink(io.BytesIO):
    writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


def record(i: int = 0) -> Record:
    return (
        1.5e9,
        f"r{i}",
        None,
        "10.0.0.1",
        "GET",
        "/v1/models",
        200,
        None,
        "p",
        None,
        1.0,
        None,
        None,
        5,
        None,
    )


async def test_lines_are_batched_and_flushed_on_a_timer() -> None:
    sink = Sink()
    writer = AccessLogWriter(sink, flush_interval=0.05)
    for i in range(100):
        writer.write(record(i))
    assert sink.getvalue() == b""
    await asyncio.sleep(0.15)
    assert sink.getvalue().count(b"\n") == 100
    assert sink.writes == 1


async def test_a_full_buffer_is_written_at_once() -> None:
    sink = Sink()
    writer = AccessLogWriter(sink, flush_interval=10, max_pending=2)
    writer.write(record(1))
    assert sink.writes == 0
    writer.write(record(2))  # the batch is full: written now, not in 10 s
    assert sink.writes == 1
    writer.write(record(3))
    writer.flush()
    assert sink.getvalue().count(b"\n") == 3


def test_several_processes_on_one_pipe_get_whole_lines_of_at_most_max_write_bytes() -> None:
    class Pieces(io.BytesIO):
        def __init__(self) -> None:
            super().__init__()
            self.pieces: list[bytes] = []

        def write(self, data: bytes) -> int:  # type: ignore[override]
            self.pieces.append(bytes(data))
            return super().write(data)

    sink = Pieces()
    writer = AccessLogWriter(sink, flush_interval=10, max_write=512)
    for i in range(100):
        writer.write(record(i))
    writer.flush()
    assert sink.getvalue().count(b"\n") == 100
    assert len(sink.pieces) > 10
    for piece in sink.pieces:
        assert len(piece) <= 512
        assert piece.endswith(b"\n")  # a line is never split between two writes


def test_a_line_longer_than_max_write_is_a_write_of_its_own() -> None:
    sink = Sink()
    writer = AccessLogWriter(sink, flush_interval=10, max_write=40)
    writer.write(record(1))
    writer.write(record(2))
    writer.flush()
    assert sink.writes == 2
    assert sink.getvalue().count(b"\n") == 2


def test_without_an_event_loop_lines_are_written_at_once() -> None:
    sink = Sink()
    AccessLogWriter(sink).write(record())
    assert sink.getvalue().startswith(b"2017-07-14T02:40:00.000Z access r0 10.0.0.1")


def test_a_broken_stream_drops_lines_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            raise OSError("disk full")

    writer = AccessLogWriter(Broken())
    writer.write(record(1))
    writer.write(record(2))
    assert writer.dropped == 2
    assert caplog.text.count("cannot write the access log") == 1


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_line_names_the_request_and_no_secret(fmt: str) -> None:
    sink = io.BytesIO()
    writer = AccessLogWriter(sink, format=format_json if fmt == "json" else format_text)
    account = Account(LoggingSettings(format=fmt), writer)  # type: ignore[arg-type]
    ctx = served_context()
    ctx.scope["headers"] = [(b"authorization", b"Bearer bst_secret")]
    ctx.meter = Meter(0, reading=True)
    ctx.meter.usage = (5, 3)
    ctx.caller_request_id = "their-id-7"
    account(ctx)
    refused = served_context()
    refused.error = ModelNotFoundError()
    refused.status = 404
    account(refused)
    account.close()
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2
    assert b"bst_secret" not in sink.getvalue()
    if fmt == "json":
        first = orjson.loads(lines[0])
        assert first["request_id"] == "rid-1"
        assert first["caller_request_id"] == "their-id-7"
        assert orjson.loads(lines[1])["caller_request_id"] is None
        assert first["principal"] == "alice"
        assert first["route"] == "/v1/chat/completions"
        assert first["status"] == 200
        assert (first["prompt_tokens"], first["completion_tokens"]) == (5, 3)
        assert orjson.loads(lines[1])["error"] == "model_not_found"
        assert orjson.loads(lines[1])["prompt_tokens"] is None
    else:
        assert b'rid-1 10.0.0.1 "POST /v1/chat/completions" 200 model=m principal=alice' in lines[0]
        assert b" tokens=5/3" in lines[0] and b"tokens=" not in lines[1]
        assert b" caller_request_id=their-id-7" in lines[0]
        assert b"caller_request_id" not in lines[1]
        assert lines[1].endswith(b"error=model_not_found")


def test_disabled_access_log_writes_nothing() -> None:
    sink = io.BytesIO()
    account = Account(LoggingSettings(access_log=False), AccessLogWriter(sink))
    account(served_context())
    account.close()
    assert sink.getvalue() == b""
