"""A cheap OTLP/HTTP traces sink for the tracing presets: takes every export, answers 200.

    python -m bench.otlp_sink --port 18090

It reads each ``POST`` whole (httptools, in C), counts the exports, their bytes and the
spans in them (a span is a length-delimited field 2 of a ScopeSpans, found by walking the
protobuf's outer messages, not decoded), and answers an empty ``ExportTraceServiceResponse``.
On SIGTERM it prints ``otlp-sink: N exports, M spans, B bytes`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import cast

import httptools
import uvloop

__all__ = ["count_spans", "main"]

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of one message: (field number, payload)."""
    found, at = [], 0
    while at < len(data):
        key, at = _varint(data, at)
        kind = key & 7
        if kind == 2:
            size, at = _varint(data, at)
            found.append((key >> 3, data[at : at + size]))
            at += size
        elif kind == 0:
            _, at = _varint(data, at)
        elif kind == 1:
            at += 8
        elif kind == 5:
            at += 4
        else:
            raise ValueError(f"wire type {kind}")
    return found


def count_spans(body: bytes) -> int:
    """Spans in an ``ExportTraceServiceRequest``."""
    count = 0
    for number, resource_spans in _fields(body):
        if number != 1:
            continue
        for inner, scope_spans in _fields(resource_spans):
            if inner == 2:
                count += sum(1 for n, _ in _fields(scope_spans) if n == 2)
    return count


class _Counts:
    exports = 0
    spans = 0
    bytes = 0


class _Sink(asyncio.Protocol):
    def __init__(self, counts: _Counts) -> None:
        self._counts = counts
        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self._body.clear()
        counts = self._counts
        counts.exports += 1
        counts.bytes += len(body)
        with contextlib.suppress(ValueError, IndexError):
            counts.spans += count_spans(body)
        assert self._transport is not None
        self._transport.write(_OK)


async def _serve(port: int) -> None:
    counts = _Counts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Sink(counts), "127.0.0.1", port, backlog=256)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"otlp-sink listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    server.close()
    print(
        f"otlp-sink: {counts.exports} exports, {counts.spans} spans, {counts.bytes} bytes",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.port))


if __name__ == "__main__":
    main()
