"""What did this request cost? One :class:`Meter` per request answers it for everyone.

Limits reconcile their reservations with it, usage records and metrics bill with it, the
access log reports it. ``admit`` makes the meter (it knows the prompt estimate and whether
usage must be read); ``forward`` passes the response through it; the rest ask it.

Token usage comes from the upstream's answer.

Non-streaming answers carry ``usage`` in their JSON. For streams the gateway asks the upstream
for it (``stream_options.include_usage``) even when the caller did not, takes the counts from
the final usage chunk, and, if the caller did not ask, removes that chunk before it reaches
the caller. A stream cut before its usage arrives is billed for what was relayed: the
prompt estimate plus one token per content event.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import orjson

__all__ = ["Meter", "UsageTap", "billed", "stream_usage_override", "usage_of"]

_TAIL = 64 * 1024
_END = re.compile(rb"\r\n\r\n|\n\n")  # an event ends with an empty line (LF or CRLF)


def usage_of(document: Any) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` from a response object, if it reports them."""
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0:
        return None
    return prompt, max(0, completion)


def billed(
    reported: tuple[int, int] | None,
    *,
    status: int,
    sse: bool,
    prompt_estimate: int,
    content_events: int,
    response_bytes: int,
) -> tuple[int, int]:
    """The (prompt, completion) tokens a request is billed: what the upstream reported, or,
    when it reported nothing, an estimate of what was relayed."""
    if reported is not None:
        return reported
    if status >= 400:
        return 0, 0  # refused or failed: nothing was generated
    if sse:
        return prompt_estimate, content_events
    return prompt_estimate, response_bytes // 4


class UsageTap:
    """Watches a relayed body for usage; in a stream, may drop the usage-only chunk.

    ``feed`` takes each piece as it arrives and returns what to send on (for a stream:
    whole events only; a partial event waits for its end). ``end`` returns what is left.
    """

    __slots__ = ("_buffer", "_sse", "_strip", "content_events", "usage")

    def __init__(self, *, sse: bool, strip: bool) -> None:
        self._sse = sse
        self._strip = strip
        self._buffer = b""
        self.usage: tuple[int, int] | None = None
        self.content_events = 0

    def feed(self, piece: bytes) -> bytes:
        if not self._sse:
            self._buffer = (self._buffer + piece)[-_TAIL:]
            return piece
        if not self._buffer and piece.endswith(b"\n\n") and b'"usage"' not in piece:
            # the usual piece: whole events, none about usage; pass it on as it is
            self.content_events += piece.count(b'"choices":[{') + piece.count(b'"choices": [{')
            return piece
        data = self._buffer + piece if self._buffer else piece
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        if lf < 0 and crlf < 0:
            self._buffer = data
            return b""
        end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        self._buffer = data[end:]
        complete = data[:end]
        if b'"usage"' not in complete:
            self.content_events += complete.count(b'"choices":[{') + complete.count(
                b'"choices": [{'
            )
            return complete
        kept, start = [], 0
        for found in _END.finditer(complete):
            kept.append(self._event(complete[start : found.end()]))
            start = found.end()
        kept.append(complete[start:])  # only line breaks, if anything
        return b"".join(kept)

    def end(self) -> bytes:
        """At the end of the body: what was held back (and, for JSON, its usage)."""
        rest, self._buffer = self._buffer, b""
        if not self._sse:
            with contextlib.suppress(orjson.JSONDecodeError):
                self.usage = usage_of(orjson.loads(rest)) or self.usage
            return b""
        return rest

    def _event(self, event: bytes) -> bytes:
        if b'"choices":[{' in event or b'"choices": [{' in event:
            self.content_events += 1
        if b'"usage"' not in event or b'"usage":null' in event or b'"usage": null' in event:
            return event  # OpenAI-style servers say "usage": null in every chunk
        payload = event.strip()
        if not payload.startswith(b"data:"):
            return event
        try:
            chunk = orjson.loads(payload[5:])
        except orjson.JSONDecodeError:
            return event
        found = usage_of(chunk)
        if found is None:
            return event
        self.usage = found
        if self._strip and isinstance(chunk, dict) and not chunk.get("choices"):
            return b""  # the chunk the caller did not ask for
        return event


class Meter:
    """The token count of one request: reported by the upstream, or estimated.

    ``reading`` says whether the response is read for usage (limits count tokens, or usage
    records are kept); without it the meter still bills an estimate. ``strip`` removes the
    stream's usage chunk, which the gateway asked for and the caller did not.
    """

    __slots__ = ("_tap", "content_events", "prompt_estimate", "reading", "strip", "usage")

    def __init__(self, prompt_estimate: int, *, reading: bool, strip: bool = False) -> None:
        self.prompt_estimate = prompt_estimate
        self.reading = reading
        self.strip = strip
        self.usage: tuple[int, int] | None = None
        """(prompt, completion) tokens as the upstream reported them."""
        self.content_events = 0
        """Content events relayed (a stream cut before its usage is billed by them)."""
        self._tap: UsageTap | None = None

    def whole(self, body: bytes, sse: bool) -> bytes:
        """A complete body, read for usage; a stream's usage chunk may be dropped."""
        if not self.reading:
            return body
        if not sse:
            if b'"usage"' in body:
                with contextlib.suppress(orjson.JSONDecodeError):
                    self.usage = usage_of(orjson.loads(body))
            return body
        tap = UsageTap(sse=True, strip=self.strip)
        kept = tap.feed(body) + tap.end()
        self.usage, self.content_events = tap.usage, tap.content_events
        return kept

    def start(self, sse: bool) -> bool:
        """A body is about to be relayed piece by piece; True if :meth:`feed` must see it."""
        if self.reading:
            self._tap = UsageTap(sse=sse, strip=self.strip)
        return self._tap is not None

    def feed(self, piece: bytes) -> bytes:
        """One piece of the body; returns what to send on (empty: nothing now)."""
        assert self._tap is not None
        return self._tap.feed(piece)

    def end(self) -> bytes:
        """The body ended (or was cut): what was held back, and the counts, are final."""
        tap = self._tap
        if tap is None:
            return b""
        rest = tap.end()
        self.usage, self.content_events = tap.usage, tap.content_events
        return rest

    def billed(self, status: int, sse: bool, response_bytes: int) -> tuple[int, int]:
        """(prompt, completion) tokens to bill (see :func:`billed`)."""
        return billed(
            self.usage,
            status=status,
            sse=sse,
            prompt_estimate=self.prompt_estimate,
            content_events=self.content_events,
            response_bytes=response_bytes,
        )


def stream_usage_override(body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``stream_options`` to forward so that a stream reports its usage, or None when
    the caller asked for it already (then the usage chunk is theirs to see) or no stream."""
    if body.get("stream") is not True:
        return None
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    return {**(options if isinstance(options, dict) else {}), "include_usage": True}
