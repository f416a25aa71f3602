"""The access log: one line per request, written in batches off the request's path.

Lines do not go through :mod:`logging` (a record, a format and a write system call per
request would cost more than the rest of the gateway). A request only leaves a tuple of its
facts (:data:`Record`); lines are formatted and written in batches, at most
``flush_interval`` seconds apart (formatting a batch in one loop costs a third of formatting
each line amid the request's work). A crash loses at most that much log.

A line names the request, the principal, the route, the model, the upstream, the status and
timings. It never holds a credential, a key hash, a query string or any of the request's or
response's content.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

import orjson

__all__ = ["AccessLogWriter", "Record", "format_json", "format_text"]

log = logging.getLogger("bastion")

# (time, request id, caller's request id, client, method, route, status, model, principal,
#  upstream, latency ms, time to first byte ms, error code, response bytes,
#  (prompt, completion) tokens)
Record = tuple[
    float, str, str | None, str, str, str, int, str | None, str | None, str | None, float,
    float | None, str | None, int, tuple[int, int] | None,
]  # fmt: skip
Formatter = Callable[[Sequence[Record]], bytes]


class _Clock:
    """Formats wall-clock times, recomputing the seconds part once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


def format_text(records: Sequence[Record]) -> bytes:
    clock = _Clock()
    lines = []
    for record in records:
        (when, rid, caller_id, client, method, route, status, model, who, upstream, ms, ttfb,
         err, _, used) = record  # fmt: skip
        lines.append(
            f'{clock.format(when)} access {rid} {client} "{method} {route}" {status} '
            f"model={model or '-'} principal={who or '-'} upstream={upstream or '-'} "
            f"latency_ms={ms} ttfb_ms={'-' if ttfb is None else ttfb}"
            f"{f' tokens={used[0]}/{used[1]}' if used else ''}"
            f"{f' caller_request_id={caller_id}' if caller_id else ''}"
            f"{f' error={err}' if err else ''}\n"
        )
    return "".join(lines).encode()


def format_json(records: Sequence[Record]) -> bytes:
    # one dict literal per record (not zip() and ** into a second dict): this runs for every
    # request, and building the object is most of what a line costs
    clock = _Clock()
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    lines = []
    for record in records:
        (when, rid, caller_id, client, method, route, status, model, who, upstream, ms, ttfb,
         err, sent, used) = record  # fmt: skip
        line = {
            "time": clock.format(when),
            "request_id": rid,
            "caller_request_id": caller_id,
            "client": client,
            "method": method,
            "route": route,
            "status": status,
            "model": model,
            "principal": who,
            "upstream": upstream,
            "latency_ms": ms,
            "ttfb_ms": ttfb,
            "error": err,
            "bytes": sent,
            "prompt_tokens": used[0] if used else None,
            "completion_tokens": used[1] if used else None,
        }
        lines.append(dumps(line, option=newline))
    return b"".join(lines)


class AccessLogWriter:
    """Collects records and writes them, formatted, together: on a timer, when many are
    waiting, and on close."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        format: Formatter = format_text,
        flush_interval: float = 0.2,
        max_pending: int = 512,
        max_write: int | None = None,
    ) -> None:
        """``max_write``: each write at most this many bytes, cut at line ends, for several
        processes sharing one pipe (the kernel never interleaves writes of up to
        ``PIPE_BUF`` bytes); None writes each batch at once."""
        self._stream = stream
        self._format = format
        self._interval = flush_interval
        self._max = max_pending
        self._records: list[Record] = []
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False
        self._max_write = max_write
        self.dropped = 0
        """Records lost because the stream could not be written."""

    def write(self, record: Record) -> None:
        self._records.append(record)
        if len(self._records) >= self._max:
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
        if not self._records:
            return
        records, self._records = self._records, []
        try:
            text = self._format(records)
            if self._max_write is None:
                self._stream.write(text)
                self._stream.flush()
            else:
                for piece in _pieces(text, self._max_write):
                    self._stream.write(piece)
                    self._stream.flush()
        except (OSError, ValueError) as exc:
            self.dropped += len(records)
            if not self._failed:  # said once, not per batch
                self._failed = True
                log.error("cannot write the access log (%s); lines are being dropped", exc)
            return
        self._failed = False


def _pieces(text: bytes, size: int) -> list[bytes]:
    """``text`` cut after line ends into pieces of at most ``size`` bytes (a longer line is a
    piece of its own)."""
    pieces: list[bytes] = []
    start = 0
    while len(text) - start > size:
        end = text.rfind(b"\n", start, start + size)
        end = text.find(b"\n", start + size) if end < 0 else end
        if end < 0:
            break
        pieces.append(text[start : end + 1])
        start = end + 1
    if start < len(text):
        pieces.append(text[start:])
    return pieces
