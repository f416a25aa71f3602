"""Phase ``account``: runs for every request, served, refused or failed. Writes the access log.

The access log line names the request, the principal, the route, the model, the upstream,
the status and timings. It never holds a credential, a key hash, a query string or any of
the request's or response's content.

Lines do not go through :mod:`logging` (a record, a format and a write system call per
request would cost more than the rest of the gateway): they are built directly and written
in batches, at most ``flush_interval`` seconds apart. A crash loses at most that much log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import BinaryIO

import orjson

from bastion.pipeline.context import RequestContext
from bastion.settings import LoggingSettings

__all__ = ["AccessLogWriter", "Account"]

log = logging.getLogger("bastion")


class AccessLogWriter:
    """Buffers lines and writes them together: on a timer, when the buffer fills, on close."""

    def __init__(
        self, stream: BinaryIO, *, flush_interval: float = 0.2, max_buffer: int = 64 * 1024
    ) -> None:
        self._stream = stream
        self._interval = flush_interval
        self._max = max_buffer
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False
        self.dropped = 0
        """Lines lost because the stream could not be written."""

    def write(self, line: bytes) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._max:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        try:
            self._stream.write(b"".join(lines))
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self.dropped += len(lines)
            if not self._failed:  # said once, not per batch
                self._failed = True
                log.error("cannot write the access log (%s); lines are being dropped", exc)
            return
        self._failed = False


class _Clock:
    """Formats the wall-clock time, recomputing the seconds part once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


class Account:
    """Writes one access-log line per request (text or JSON), when enabled."""

    def __init__(self, settings: LoggingSettings, writer: AccessLogWriter | None) -> None:
        self._writer = writer if settings.access_log else None
        self._json = settings.format == "json"
        self._clock = _Clock()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def __call__(self, ctx: RequestContext) -> None:
        writer = self._writer
        if writer is None:
            return
        route = ctx.route.path if ctx.route else "-"
        principal = ctx.identity.principal if ctx.identity else None
        status = 499 if ctx.client_disconnected and not ctx.response_done else ctx.status
        latency = round(ctx.elapsed_ms(), 2)
        ttfb = None if ctx.time_to_first_byte is None else round(ctx.time_to_first_byte * 1000, 2)
        error = ctx.error.code if ctx.error else None
        if self._json:
            line = orjson.dumps(
                {
                    "time": self._clock.now(),
                    "request_id": ctx.request_id,
                    "client": ctx.client_host,
                    "method": ctx.method,
                    "route": route,
                    "model": ctx.model,
                    "principal": principal,
                    "upstream": ctx.upstream,
                    "status": status,
                    "error": error,
                    "bytes": ctx.response_bytes,
                    "latency_ms": latency,
                    "ttfb_ms": ttfb,
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
        else:
            line = (
                f"{self._clock.now()} access {ctx.request_id} {ctx.client_host} "
                f'"{ctx.method} {route}" {status} model={ctx.model or "-"} '
                f"principal={principal or '-'} upstream={ctx.upstream or '-'} "
                f"latency_ms={latency} ttfb_ms={'-' if ttfb is None else ttfb}"
                f"{f' error={error}' if error else ''}\n"
            ).encode()
        writer.write(line)
