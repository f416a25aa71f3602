"""The request-response cycle of a connection: uvicorn's, with a cheaper ``send`` and a
``respond`` that writes a whole response at once.

uvicorn makes one :class:`~uvicorn.protocols.http.httptools_impl.RequestResponseCycle` per
request; the server protocol (:mod:`bastion.server.protocol`) makes a :class:`Cycle` instead.
``tests/unit/test_uvicorn_internals.py`` fails when uvicorn's ``send`` changes, so that a
change there is carried over here.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from bastion.types import RESPOND_SCOPE_KEY

__all__ = ["Cycle"]

# The bytes uvicorn's expressions refuse (each is one character class), for bytes.translate:
# deleting them is one pass over a table, several times cheaper than a regular expression
_BAD_NAME = bytes(b for b in range(256) if HEADER_RE.search(bytes((b,))))
_BAD_VALUE = bytes(b for b in range(256) if HEADER_VALUE_RE.search(bytes((b,))))


class Cycle(RequestResponseCycle):
    """uvicorn's request-response cycle with a cheaper ``send``, and :meth:`respond`.

    uvicorn checks every response header name and value with a regular expression of its
    own, two searches per header: with the rate-limit headers that was two dozen searches
    per response, more than the rest of writing the head. This checks all names at once and
    all values at once (joined by a character each class allows), deleting the bytes
    uvicorn's expressions match, so the same heads are refused. The rest is uvicorn's
    ``send``.
    """

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self.response_started = True
            self.waiting_for_100_continue = False
            self.transport.write(self._head(message["status"], message.get("headers", ())))
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                )
            more_body = message.get("more_body", False)
            data = self._body(message.get("body", b""), more_body)
            if data:
                self.transport.write(data)
            if not more_body:
                self._complete()
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already "
                "completed."
            )

    def respond(self, status: int, headers: Any, body: bytes) -> bool:
        """A whole response, head and body in one write, as ``send`` would write its start
        and its one body message, without awaiting either. False, and nothing done, when
        the response has begun, the caller is gone, or its socket is full (then ``send``,
        which waits for it to drain, must be used)."""
        if self.response_started or self.disconnected or self.flow.write_paused:
            return False
        self.response_started = True
        self.waiting_for_100_continue = False
        head = self._head(status, headers)
        self.transport.write(head + self._body(body, False))
        self._complete()
        return True

    def _head(self, status: int, given: Any) -> bytes:
        headers = self.default_headers + list(given)
        names = b"-".join([name for name, _ in headers])
        if len(names.translate(None, _BAD_NAME)) != len(names):
            raise RuntimeError("Invalid HTTP header name.")
        values = b"\t".join([value for _, value in headers])
        if len(values.translate(None, _BAD_VALUE)) != len(values):
            raise RuntimeError("Invalid HTTP header value.")
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status,
            )
        content = [STATUS_LINE[status]]
        has_connection_close = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True  # neither a length nor a transfer coding given
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)

    def _body(self, body: bytes, more_body: bool) -> bytes:
        """What to write for a body message (framed, when chunked)."""
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            return b""
        if self.chunked_encoding:
            content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more_body:
                content.append(b"0\r\n\r\n")
            return b"".join(content)
        if len(body) > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        self.expected_content_length -= len(body)
        return body

    def _complete(self) -> None:
        """The last body message was written."""
        if self.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        self.response_complete = True
        # the scope holds ``respond``, a method of this cycle: a reference cycle that would
        # keep the request's objects for the cyclic collector, whose rare large sweeps
        # stalled every stream for tens of milliseconds under load (docs/performance.md)
        self.scope.pop(RESPOND_SCOPE_KEY, None)  # type: ignore[misc]
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
