"""A lean streaming load client: raw asyncio sockets, httptools' response parser, uvloop.

httpx and aiohttp cost more per event than the gateways under test, so they would measure
themselves. Here one connection is one ``asyncio.Protocol``; time is read once per
``data_received`` and every SSE event in that read gets that time.

Two scenarios use it:

- :func:`run_streams`: N workers, each streaming chat completions back to back on one kept-alive
  connection until a deadline; starts are spread over a ramp so the gateway sees a steady
  arrival rate, not one burst. Records time to first event and every inter-event gap.
- :func:`hold_streams`: open N streams at a given rate, wait until each has its first event,
  sample the gateway's memory, keep them open a while, then close them.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

__all__ = [
    "HoldResult",
    "Recorder",
    "StreamConnection",
    "Target",
    "hold_streams",
    "percentile",
    "run_streams",
    "stream_request",
]

_STREAM_BODY = (
    b'{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}],'
    b'"max_tokens":32,"stream":true,"stream_options":{"include_usage":true}}'
)


def percentile(values: array[float] | list[float], pct: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted here); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    auth: str | None


def stream_request(target: Target) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: {target.host}:{target.port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(_STREAM_BODY)}",
    ]
    if target.auth:
        lines.append(f"Authorization: {target.auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + _STREAM_BODY


@dataclass
class Recorder:
    """What every stream of one scenario saw."""

    expected_events: int
    ttft: array[float] = field(default_factory=lambda: array("d"))
    gaps: array[float] = field(default_factory=lambda: array("d"))
    events: int = 0
    connects: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class StreamConnection(asyncio.Protocol):
    """One kept-alive client connection that runs one stream at a time."""

    def __init__(self, recorder: Recorder) -> None:
        self._rec = recorder
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self.closed = False
        self._now = 0.0
        self._started = 0.0
        self._last = 0.0
        self._count = 0
        self._status = 0
        self._ends_nl = False
        self._tail = b""
        self._done: asyncio.Future[str] | None = None
        self.first_event: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        if not self._closing:
            self._finish("reset")

    def data_received(self, data: bytes) -> None:
        self._now = time.perf_counter()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish("bad_http")
            self.close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        found = body.count(b"\n\n") + (1 if self._ends_nl and body[:1] == b"\n" else 0)
        self._ends_nl = body[-1:] == b"\n"
        self._tail = (self._tail + body)[-16:]
        if not found or self._status != 200:
            return
        now = self._now
        if self._count == 0:
            self._rec.ttft.append(now - self._started)
            if self.first_event is not None and not self.first_event.done():
                self.first_event.set_result(None)
        else:
            self._rec.gaps.append(now - self._last)
        self._rec.gaps.extend([0.0] * (found - 1))
        self._last = now
        self._count += found
        self._rec.events += found

    def on_message_complete(self) -> None:
        if self._status != 200:
            self._finish(f"http_{self._status}")
        elif b"[DONE]" not in self._tail:
            self._finish("no_done")
        elif self._count < self._rec.expected_events:
            self._finish("short")
        else:
            self._finish("ok")
        if not self._parser.should_keep_alive():
            self.close()

    # -- driving -----------------------------------------------------------------------------

    def send(self, request: bytes) -> asyncio.Future[str]:
        """Start one stream; the future says how it ended ("ok" or an error kind)."""
        self._started = time.perf_counter()
        self._count = 0
        self._status = 0
        self._ends_nl = False
        self._tail = b""
        self._done = self._loop.create_future()
        self.first_event = self._loop.create_future()
        if self._transport is None:
            self._finish("reset")
        else:
            self._transport.write(request)
        return self._done

    def _finish(self, outcome: str) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(outcome)
        first = self.first_event
        if first is not None and not first.done():
            first.set_result(None)

    def outcome(self) -> str | None:
        """How the current stream ended, or None while it runs."""
        done = self._done
        return done.result() if done is not None and done.done() else None

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()


async def _connect(target: Target, recorder: Recorder) -> StreamConnection:
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(
        lambda: StreamConnection(recorder), target.host, target.port
    )
    return protocol


async def _one_stream(
    conn: StreamConnection, request: bytes, recorder: Recorder, timeout_s: float
) -> bool:
    """Run one stream; False when the connection can no longer be used."""
    try:
        outcome = await asyncio.wait_for(conn.send(request), timeout_s)
    except TimeoutError:
        recorder.errors["timeout"] += 1
        conn.close()
        return False
    if outcome == "ok":
        recorder.ok += 1
    else:
        recorder.errors[outcome] += 1
    return outcome == "ok" and not conn.closed


async def _worker(
    target: Target, recorder: Recorder, start_at: float, deadline: float, timeout_s: float
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    request = stream_request(target)
    conn: StreamConnection | None = None
    try:
        while loop.time() < deadline:
            if conn is None or conn.closed:
                recorder.connects += 1
                try:
                    conn = await asyncio.wait_for(_connect(target, recorder), 10.0)
                except (OSError, TimeoutError):
                    recorder.errors["connect"] += 1
                    conn = None
                    await asyncio.sleep(0.05)
                    continue
            if not await _one_stream(conn, request, recorder, timeout_s):
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


async def run_streams(
    target: Target,
    streams: int,
    seconds: float,
    ramp_s: float,
    expected_events: int,
    timeout_s: float,
) -> Recorder:
    """``streams`` concurrent streaming clients for ``seconds``; in-flight streams finish."""
    loop = asyncio.get_running_loop()
    recorder = Recorder(expected_events=expected_events)
    begin = loop.time()
    deadline = begin + seconds
    workers = [
        _worker(target, recorder, begin + ramp_s * i / streams, deadline, timeout_s)
        for i in range(streams)
    ]
    await asyncio.gather(*workers)
    return recorder


@dataclass
class HoldResult:
    requested: int
    opened: int = 0
    failed_to_open: int = 0
    lost_while_held: int = 0
    open_seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


async def _open_one(
    target: Target,
    request: bytes,
    recorder: Recorder,
    start_at: float,
    timeout_s: float,
    result: HoldResult,
) -> StreamConnection | None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    try:
        conn = await asyncio.wait_for(_connect(target, recorder), timeout_s)
    except (OSError, TimeoutError) as exc:
        result.errors[f"connect:{type(exc).__name__}"] += 1
        return None
    outcome = conn.send(request)
    first = conn.first_event
    assert first is not None  # set by send()
    try:
        await asyncio.wait_for(asyncio.shield(first), timeout_s)
    except TimeoutError:
        result.errors["no_first_event"] += 1
        conn.close()
        return None
    if outcome.done():
        result.errors[outcome.result()] += 1
        conn.close()
        return None
    return conn


async def hold_streams(
    target: Target,
    streams: int,
    open_rate: float,
    hold_s: float,
    open_timeout_s: float,
    when_open: Callable[[HoldResult], None],
) -> HoldResult:
    """Open ``streams`` streams; call ``when_open`` once all have an event; hold; close."""
    loop = asyncio.get_running_loop()
    recorder = Recorder(expected_events=0)
    result = HoldResult(requested=streams)
    request = stream_request(target)
    begin = loop.time()
    openers = [
        _open_one(target, request, recorder, begin + i / open_rate, open_timeout_s, result)
        for i in range(streams)
    ]
    conns = [c for c in await asyncio.gather(*openers) if c is not None]
    result.open_seconds = loop.time() - begin
    result.opened = len(conns)
    result.failed_to_open = streams - len(conns)
    try:
        when_open(result)
        await asyncio.sleep(hold_s)
        for conn in conns:
            ended = conn.outcome()
            if conn.closed or ended is not None:
                result.lost_while_held += 1
                result.errors[f"held:{ended or 'closed'}"] += 1
    finally:
        for conn in conns:
            conn.close()
    return result
