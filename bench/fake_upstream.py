"""A cheap fake of a vLLM / OpenAI-compatible server, for benchmarks.

It shares a core with the load generator, so every byte it can send is built once, ahead of
time, and a request costs one parse (httptools, in C) and one ``transport.write``.

    python -m bench.fake_upstream --port 18001 [--ttft-ms 20 --gap-ms 10 --events 32]

- ``POST /v1/chat/completions`` answers a fixed ``chat.completion`` (with ``usage``) and a
  ``content-length``, on a kept-alive connection;
- with ``"stream": true`` in the body it answers ``text/event-stream``, chunked: after
  ``--ttft-ms`` it sends ``--events`` ``chat.completion.chunk`` events ``--gap-ms`` apart, then a
  usage chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``;
- ``GET /health`` answers 200 and ``GET /v1/models`` lists the model.

Event times are scheduled from the start of the stream (``call_at``), so one late timer does
not delay every later event: the gaps a client sees are the upstream's own plus jitter.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools
import orjson
import uvloop

__all__ = ["Responses", "UpstreamProtocol", "main", "serve"]

_CREATED = 1_700_000_000
_ID = "chatcmpl-bench0000000000000000"
_CONTENT = "Hello! This is a fixed answer from the benchmark's fake upstream."
_PROMPT_TOKENS = 12
_MAX_CACHED_MODELS = 16


@dataclass(frozen=True)
class Timing:
    """How the fake paces a stream."""

    ttft_s: float
    gap_s: float
    events: int


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _fixed(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    headers = [("content-type", content_type), ("content-length", str(len(body)))]
    return _head(status, headers) + body


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(obj: object) -> bytes:
    return _chunk(b"data: " + orjson.dumps(obj) + b"\n\n")


class Responses:
    """Every response the fake can send for one model name, built once."""

    def __init__(self, model: str, events: int) -> None:
        self.completion = _fixed("200 OK", orjson.dumps(self._completion(model)))
        self.stream_head = _head(
            "200 OK",
            [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
                ("transfer-encoding", "chunked"),
            ],
        )
        self.events = [self._event(model, i, events) for i in range(events)]
        usage = {**self._chunk_base(model), "choices": [], "usage": self._usage(events)}
        self.usage = _sse(usage)
        self.done = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    @staticmethod
    def _usage(completion_tokens: int) -> dict[str, int]:
        total = _PROMPT_TOKENS + completion_tokens
        return {
            "prompt_tokens": _PROMPT_TOKENS,
            "completion_tokens": completion_tokens,
            "total_tokens": total,
        }

    @classmethod
    def _completion(cls, model: str) -> dict[str, object]:
        message = {"role": "assistant", "content": _CONTENT}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        return {
            "id": _ID,
            "object": "chat.completion",
            "created": _CREATED,
            "model": model,
            "choices": [choice],
            "usage": cls._usage(16),
        }

    @staticmethod
    def _chunk_base(model: str) -> dict[str, object]:
        return {"id": _ID, "object": "chat.completion.chunk", "created": _CREATED, "model": model}

    @classmethod
    def _event(cls, model: str, index: int, count: int) -> bytes:
        delta: dict[str, str] = {"content": f"tok{index} "}
        if index == 0:
            delta["role"] = "assistant"
        finish = "stop" if index == count - 1 else None
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**cls._chunk_base(model), "choices": [choice]})


_HEALTH = _fixed("200 OK", b"")
_NOT_FOUND = _fixed("404 Not Found", b'{"error":{"message":"not found","type":"not_found"}}')
_BAD_REQUEST = _fixed("400 Bad Request", b'{"error":{"message":"bad json","type":"bad"}}')


class Catalog:
    """Responses per model name; a small bounded cache, the default model built up front."""

    def __init__(self, timing: Timing, default_model: str) -> None:
        self.timing = timing
        self.default_model = default_model
        self._by_model = {default_model: Responses(default_model, timing.events)}
        models = {"object": "list", "data": [{"id": default_model, "object": "model"}]}
        self.models = _fixed("200 OK", orjson.dumps(models))

    def get(self, model: str) -> Responses:
        found = self._by_model.get(model)
        if found is None:
            if len(self._by_model) >= _MAX_CACHED_MODELS:
                return self._by_model[self.default_model]
            found = self._by_model[model] = Responses(model, self.timing.events)
        return found


class UpstreamProtocol(asyncio.Protocol):
    """One client connection; requests are answered in order (a stream blocks the next)."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._pending: deque[tuple[bytes, bytes, bytes, bool]] = deque()
        self._streaming = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_BAD_REQUEST)
                self._transport.close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        request = (method, self._url, b"".join(self._body), self._parser.should_keep_alive())
        self._url = b""
        self._body = []
        if self._streaming:
            self._pending.append(request)
        else:
            self._answer(*request)

    # -- answering ---------------------------------------------------------------------------

    def _answer(self, method: bytes, url: bytes, body: bytes, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        path = url.split(b"?", 1)[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            self._chat(transport, body, keep_alive)
            return
        if method == b"GET" and path == b"/health":
            transport.write(_HEALTH)
        elif method == b"GET" and path == b"/v1/models":
            transport.write(self._catalog.models)
        else:
            transport.write(_NOT_FOUND)
        if not keep_alive:
            transport.close()

    def _chat(self, transport: asyncio.Transport, body: bytes, keep_alive: bool) -> None:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            transport.write(_BAD_REQUEST)
            transport.close()
            return
        model = request.get("model")
        responses = self._catalog.get(model if isinstance(model, str) else "")
        if request.get("stream") is True:
            options = request.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            self._start_stream(transport, responses, usage, keep_alive)
            return
        transport.write(responses.completion)
        if not keep_alive:
            transport.close()

    def _start_stream(
        self, transport: asyncio.Transport, responses: Responses, usage: bool, keep_alive: bool
    ) -> None:
        self._streaming = True
        transport.write(responses.stream_head)
        start = self._loop.time() + self._catalog.timing.ttft_s
        self._timer = self._loop.call_at(start, self._emit, responses, 0, start, usage, keep_alive)

    def _emit(
        self, responses: Responses, index: int, start: float, usage: bool, keep_alive: bool
    ) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        transport.write(responses.events[index])
        index += 1
        if index < len(responses.events):
            when = start + index * self._catalog.timing.gap_s
            self._timer = self._loop.call_at(
                when, self._emit, responses, index, start, usage, keep_alive
            )
            return
        if usage:
            transport.write(responses.usage)
        transport.write(responses.done)
        self._streaming = False
        if not keep_alive:
            transport.close()
            return
        while self._pending and not self._streaming and self._transport is not None:
            self._answer(*self._pending.popleft())


async def serve(host: str, port: int, timing: Timing, model: str) -> None:
    """Serve until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    catalog = Catalog(timing, model)
    server = await loop.create_server(
        lambda: UpstreamProtocol(catalog), host, port, backlog=4096, reuse_address=True
    )
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    async with server:
        await stop


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="delay before event 1")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="time between events")
    parser.add_argument("--events", type=int, default=32, help="content events per stream")
    parser.add_argument("--model", default="bench-model", help="model name built up front")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be at least 1")
    if args.ttft_ms < 0 or args.gap_ms < 0:
        parser.error("--ttft-ms and --gap-ms must not be negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    timing = Timing(args.ttft_ms / 1000, args.gap_ms / 1000, args.events)
    gc.freeze()  # keep collector pauses out of the upstream's timing
    gc.set_threshold(100_000, 50, 1_000)
    uvloop.run(serve(args.host, args.port, timing, args.model))


if __name__ == "__main__":
    main()
