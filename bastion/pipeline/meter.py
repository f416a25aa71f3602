"""What did this request cost? One :class:`Meter` per request answers it for everyone.

Limits reconcile their reservations with it, usage records and metrics bill with it, the
access log reports it. ``admit`` makes the meter (it knows the prompt estimate and whether
usage must be read); ``forward`` passes the response through it; the rest ask it.

Token usage comes from the upstream's answer.

Non-streaming answers carry ``usage`` in their JSON. For streams the gateway asks the upstream
for it (``stream_options.include_usage``) even when the caller did not, takes the counts from
the final usage chunk, and, if the caller did not ask, removes that chunk before it reaches
the caller. Anthropic's streams report the prompt in ``message_start`` and the totals in
``message_delta``; a Responses API stream reports it in its terminal event's response
(``response.completed``); both always reach the caller. A stream cut before its usage
arrives is billed for what was relayed: the prompt estimate plus one token per content event
(chat and completions chunks, Anthropic content deltas, Responses text deltas).

Reading a stream costs time and memory in proportion to its length, however it is cut into
pieces: each byte is looked at once for an event's end, and a partial event is held as a list
of pieces. An event that grows past ``max_event_bytes`` before its end is not read at all: it
goes on as it arrives (its usage, if it carried any, is then not seen).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

import orjson

__all__ = [
    "MAX_EVENT_BYTES",
    "Meter",
    "UsageTap",
    "billed",
    "json_usage",
    "stream_usage_override",
    "usage_of",
]

MAX_EVENT_BYTES = 1024 * 1024
"""The default limit on the partial event held back to be read."""
_TAIL = 64 * 1024
_END = re.compile(rb"\r\n\r\n|\n\n")  # an event ends with an empty line (LF or CRLF)
_REACH = 3
"""Bytes before a piece in which the blank line ending an event may have begun (three of
CRLF CRLF's four)."""


def usage_of(document: Any, previous: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` from a response object or stream event, if it
    reports them: OpenAI's ``usage``, Anthropic's (``message_start`` nests it in ``message``;
    cached prompt tokens are counted in), the Responses API's (nested in ``response``). An
    event that reports only output tokens (Anthropic's ``message_delta``) keeps the prompt
    of ``previous``."""
    usage = _usage_object(document)
    if usage is None:
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(completion, int):
        return None
    if not isinstance(prompt, int):
        if previous is None or "output_tokens" not in usage:
            return None
        prompt = previous[0]
    elif "input_tokens" in usage:
        for cached in ("cache_read_input_tokens", "cache_creation_input_tokens"):
            extra = usage.get(cached)
            if isinstance(extra, int) and extra > 0:
                prompt += extra
    if prompt < 0:
        return None
    return prompt, max(0, completion)


def json_usage(body: bytes) -> tuple[int, int] | None:
    """The usage a JSON response body reports (as :func:`usage_of` reads the document).

    Usually only its tail is parsed: in valid JSON the bytes ``"usage":`` (the quote not
    escaped) can only be a key, and when it is a key of the top-level object, ``{`` plus the
    body from there is itself a document holding that object's keys from ``usage`` on.
    Parsing that is a fraction of parsing the whole answer. When the last such key is
    nested deeper, that tail has brackets left over and does not parse: then, and whenever
    the tail reports nothing, the whole body is parsed."""
    at = body.rfind(b'"usage":')
    if at > 0 and body[at - 1] != 0x5C:  # not \" (a quote inside a string)
        with contextlib.suppress(orjson.JSONDecodeError):
            found = usage_of(orjson.loads(b"{" + body[at:]))
            if found is not None:
                return found
    with contextlib.suppress(orjson.JSONDecodeError):
        return usage_of(orjson.loads(body))
    return None


def _usage_object(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if usage is None:
        for outer in ("message", "response"):
            inner = document.get(outer)
            if isinstance(inner, dict) and isinstance(inner.get("usage"), dict):
                return inner["usage"]  # type: ignore[no-any-return]
    return usage if isinstance(usage, dict) else None


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


def _last_end(data: bytes) -> int:
    """Where the last event that ends in ``data`` ends, after its blank line (0: none)."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _first_end(data: bytes) -> int:
    """Where the first event that ends in ``data`` ends, after its blank line (0: none)."""
    lf, crlf = data.find(b"\n\n"), data.find(b"\r\n\r\n")
    if lf < 0 or crlf < 0:
        return lf + 2 if lf >= 0 else crlf + 4 if crlf >= 0 else 0
    return min(lf + 2, crlf + 4)


# What marks an event that carries generated content: an OpenAI chunk with a choice, an
# Anthropic content block delta, a Responses API text delta
_CONTENT_MARKS = (
    b'"choices":[{',
    b'"choices": [{',
    b'"type":"content_block_delta"',
    b'"type":"response.output_text.delta"',
)


_CHOICE, _SPACED_CHOICE, _BLOCK_DELTA, _TEXT_DELTA = _CONTENT_MARKS
_BLANK = b"\n\n"


def _is_content(event: bytes) -> bool:
    return (
        _CHOICE in event or _SPACED_CHOICE in event or _BLOCK_DELTA in event or _TEXT_DELTA in event
    )


class UsageTap:
    """Watches a relayed body for usage; in a stream, may drop the usage-only chunk.

    ``feed`` takes each piece as it arrives and returns what to send on (for a stream:
    whole events only; a partial event waits for its end, unless it outgrows
    ``max_event_bytes``: then it goes on unread as it arrives). ``end`` returns what is left.
    """

    __slots__ = (
        "_held",
        "_held_bytes",
        "_json_tail",
        "_limit",
        "_mark",
        "_passing",
        "_reach",
        "_sse",
        "_strip",
        "content_events",
        "usage",
    )

    def __init__(self, *, sse: bool, strip: bool, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._sse = sse
        self._strip = strip
        self._limit = max_event_bytes
        self._held: list[bytes] = []
        """The pieces of the partial event, joined once when it ends."""
        self._held_bytes = 0
        self._reach = b""
        """The last bytes looked at, where the blank line ending an event may have begun."""
        self._passing = False
        """Inside an event over the limit: relayed as it arrives, unread, until its end."""
        self._json_tail = bytearray()
        """A JSON body's last bytes, where its usage is."""
        self._mark: bytes | None = None
        """The content mark this stream's events carry, once one was seen."""
        self.usage: tuple[int, int] | None = None
        self.content_events = 0

    def feed(self, piece: bytes) -> bytes:
        if not self._sse:
            tail = self._json_tail
            tail += piece
            if len(tail) > 2 * _TAIL:  # trimmed now and then, not copied per piece
                del tail[:-_TAIL]
            return piece
        if self._passing:
            return self._pass(piece)
        if not self._held and piece[-2:] == _BLANK and b'"usage"' not in piece:
            # the usual piece: whole events, none about usage; pass it on as it is (a slice
            # compared, not endswith: bytes methods that take arguments parse them per call)
            mark = self._mark
            found = 0 if mark is None else piece.count(mark)
            self.content_events += found or self._count(piece)
            return piece
        return self._take(piece)

    def end(self) -> bytes:
        """At the end of the body: what was held back (and, for JSON, its usage)."""
        if not self._sse:
            rest = bytes(self._json_tail[-_TAIL:])
            self._json_tail.clear()
            with contextlib.suppress(orjson.JSONDecodeError):
                self.usage = usage_of(orjson.loads(rest)) or self.usage
            return b""
        rest = b"".join(self._held)
        self._held.clear()
        self._held_bytes, self._reach, self._passing = 0, b"", False
        return rest

    def _count(self, events: bytes) -> int:
        """Content events among whole events. A stream speaks one API, so once an event has
        shown which mark its content carries, that mark alone is counted (one scan of the
        piece, not four); all four are counted when it finds none (a usage or final event)."""
        mark = self._mark
        if mark is not None:
            found = events.count(mark)
            if found:
                return found
        found = 0
        for candidate in _CONTENT_MARKS:
            count = events.count(candidate)
            if count:
                found += count
                self._mark = candidate
        return found

    def _take(self, piece: bytes) -> bytes:
        """Whole events go on; the partial one after them is held (only new bytes are
        searched for its end: what is held has none)."""
        held = self._held
        window = self._reach + piece if held else piece
        end = _last_end(window) - (len(window) - len(piece))
        if end <= 0:
            if piece:
                held.append(piece)
                self._held_bytes += len(piece)
                self._reach = window[-_REACH:]
            return self._overflow() if self._held_bytes > self._limit else b""
        complete = b"".join([*held, piece[:end]]) if held else piece[:end]
        held.clear()
        rest = piece[end:]
        if rest:
            held.append(rest)
        self._held_bytes, self._reach = len(rest), rest[-_REACH:]
        kept = self._events(complete)
        return kept + self._overflow() if self._held_bytes > self._limit else kept

    def _overflow(self) -> bytes:
        """The partial event outgrew the limit: what is held of it goes on now, the rest as
        it arrives, unread (one content event if it began like one)."""
        partial = b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        self._passing = True  # the reach stays: the event's blank line may begin in it
        if _is_content(partial):
            self.content_events += 1
        return partial

    def _pass(self, piece: bytes) -> bytes:
        """A piece of an event over the limit: on at once; what follows its end is read."""
        window = self._reach + piece
        end = _first_end(window) - (len(window) - len(piece))
        if end <= 0:
            self._reach = window[-_REACH:]
            return piece
        self._passing, self._reach = False, b""
        if end == len(piece):
            return piece
        return piece[:end] + self._take(piece[end:])

    def _events(self, complete: bytes) -> bytes:
        """Whole events: counted, read for usage, the usage-only chunk dropped if asked."""
        if b'"usage"' not in complete:
            self.content_events += self._count(complete)
            return complete
        kept, start = [], 0
        for found in _END.finditer(complete):
            kept.append(self._event(complete[start : found.end()]))
            start = found.end()
        kept.append(complete[start:])  # only line breaks, if anything
        return b"".join(kept)

    def _event(self, event: bytes) -> bytes:
        if _is_content(event):
            self.content_events += 1
        if b'"usage"' not in event or b'"usage":null' in event or b'"usage": null' in event:
            return event  # OpenAI-style servers say "usage": null in every chunk
        start = event.find(b"data:")  # after an "event:" line, in Anthropic's streams
        if start < 0:
            return event
        end = event.find(b"\n", start)
        try:
            chunk = orjson.loads(event[start + 5 : end if end >= 0 else len(event)])
        except orjson.JSONDecodeError:
            return event
        found = usage_of(chunk, self.usage)
        if found is None:
            return event
        self.usage = found
        # OpenAI's usage-only chunk (no event name), which the caller did not ask for
        if self._strip and start == 0 and isinstance(chunk, dict) and chunk.get("choices") == []:
            return b""
        return event


class Meter:
    """The token count of one request: reported by the upstream, or estimated.

    ``reading`` says whether the response is read for usage (limits count tokens, or usage
    records are kept); without it the meter still bills an estimate. ``strip`` removes the
    stream's usage chunk, which the gateway asked for and the caller did not. A stream's
    event larger than ``max_event_bytes`` goes on unread (see :class:`UsageTap`).
    """

    __slots__ = (
        "_tap",
        "content_events",
        "max_event_bytes",
        "prompt_estimate",
        "reading",
        "strip",
        "usage",
    )

    def __init__(
        self,
        prompt_estimate: int,
        *,
        reading: bool,
        strip: bool = False,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.prompt_estimate = prompt_estimate
        self.reading = reading
        self.strip = strip
        self.max_event_bytes = max_event_bytes
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
                self.usage = json_usage(body)
            return body
        tap = UsageTap(sse=True, strip=self.strip, max_event_bytes=self.max_event_bytes)
        kept = tap.feed(body) + tap.end()
        self.usage, self.content_events = tap.usage, tap.content_events
        return kept

    def start(self, sse: bool) -> bool:
        """A body is about to be relayed piece by piece; True if :meth:`feed` must see it."""
        if self.reading:
            self._tap = UsageTap(sse=sse, strip=self.strip, max_event_bytes=self.max_event_bytes)
        return self._tap is not None

    def feed(self, piece: bytes) -> bytes:
        """One piece of the body; returns what to send on (empty: nothing now)."""
        assert self._tap is not None
        return self._tap.feed(piece)

    @property
    def feeder(self) -> Callable[[bytes], bytes]:
        """:meth:`feed` without the call in between, for the relay of each piece (after
        :meth:`start` said the body must be fed)."""
        assert self._tap is not None
        return self._tap.feed

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
