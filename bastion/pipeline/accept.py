"""Phase ``accept``: read the request head's few useful headers and the body, within limits.

Limits on the head itself (size, count, how long it may take to arrive) are enforced by the
server protocol before the application is called; this phase enforces the body's size and
deadline and parses it once.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson

from bastion.errors import (
    BadRequestError,
    MalformedBodyError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import BodyKind
from bastion.pipeline.multipart import form_field
from bastion.settings import HttpSettings

__all__ = ["Acceptor", "RequestIds", "json_object"]

_REQUEST_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
_MAX_REQUEST_ID = 128


class RequestIds:
    """Bastion's request ids: 128 random bits each, from the operating system's CSPRNG.

    The id sent to an upstream must not be guessable: vLLM keys a request's work by it, and
    a caller who can guess another's id can reach into its results (PYSEC-2026-4198, /score
    and /rerank). The caller's own ``X-Request-Id`` is therefore never forwarded, and ids are
    not counters. Randomness is drawn 256 ids at a time (one system call), then sliced.
    """

    __slots__ = ("_at", "_pool")

    _BATCH = 256

    def __init__(self) -> None:
        self._pool = ""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(16 * self._BATCH).hex()
            at = 0
        self._at = at + 32
        return self._pool[at : at + 32]


class Acceptor:
    """Reads the request: headers of interest, then the body, with its size and time limits."""

    def __init__(self, settings: HttpSettings) -> None:
        self._max_body = settings.max_body_bytes
        self._body_timeout = settings.request_body_timeout
        self._ids = RequestIds()

    def read_head(self, ctx: RequestContext) -> None:
        """Pick the headers the pipeline uses, in one pass over the raw header list."""
        request_id = b""
        for name, value in ctx.scope["headers"]:
            if name == b"authorization":
                ctx.authorization = value
            elif name == b"content-type":
                ctx.content_type = value.lower()
            elif name == b"content-length":
                ctx.content_length = _content_length(value)
            elif name == b"x-request-id":
                request_id = value
            elif name == b"x-api-key":
                ctx.api_key = value
            elif name == b"x-forwarded-for":
                ctx.forwarded_for = value
            elif name == b"x-bastion-model":
                ctx.control_model = value.decode("latin-1")
        ctx.request_id = self._ids.next()
        if 0 < len(request_id) <= _MAX_REQUEST_ID and _REQUEST_ID_CHARS.issuperset(request_id):
            ctx.caller_request_id = request_id.decode("ascii")

    async def read_body(self, ctx: RequestContext) -> None:
        """Read the whole body (bounded), then parse it as the route requires."""
        if ctx.content_length is not None and ctx.content_length > self._max_body:
            raise PayloadTooLargeError()
        message = await ctx.receive()
        body = message.get("body", b"")
        if message.get("more_body", False):
            body = await self._read_rest(ctx, body)
        elif len(body) > self._max_body:
            raise PayloadTooLargeError()
        if message["type"] == "http.disconnect":
            ctx.client_disconnected = True
        ctx.body = body
        assert ctx.endpoint is not None
        kind = ctx.endpoint.body
        if kind is BodyKind.JSON:
            self._parse_json(ctx)
        elif kind is BodyKind.MULTIPART:
            self._parse_multipart(ctx)

    async def _read_rest(self, ctx: RequestContext, first: bytes) -> bytes:
        parts = bytearray(first)
        try:
            async with asyncio.timeout(self._body_timeout):
                while True:
                    message = await ctx.receive()
                    if message["type"] == "http.disconnect":
                        ctx.client_disconnected = True
                        raise BadRequestError("The client went away while sending the body.")
                    parts += message.get("body", b"")
                    if len(parts) > self._max_body:
                        raise PayloadTooLargeError()
                    if not message.get("more_body", False):
                        return bytes(parts)
        except TimeoutError:
            raise RequestTimeoutError() from None

    def _parse_json(self, ctx: RequestContext) -> None:
        if not ctx.content_type.startswith(b"application/json") and ctx.content_type:
            raise UnsupportedMediaTypeError("Send the request body as application/json.")
        parsed = json_object(ctx.body)
        ctx.json = parsed
        model = parsed.get("model")
        if model is not None and not isinstance(model, str):
            raise BadRequestError("'model' must be a string.", param="model")
        ctx.model = model

    def _parse_multipart(self, ctx: RequestContext) -> None:
        if not ctx.content_type.startswith(b"multipart/form-data"):
            raise UnsupportedMediaTypeError("Send the request body as multipart/form-data.")
        value = form_field(ctx.content_type, ctx.body, b"model")
        ctx.model = value.decode("utf-8", "replace") if value is not None else None


def _content_length(value: bytes) -> int:
    if not value.isdigit() or len(value) > 18:
        raise BadRequestError("Invalid Content-Length header.")
    return int(value)


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object: 400 (malformed, or not an object) if not."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedBodyError() from None
    if not isinstance(parsed, dict):
        raise BadRequestError("The request body must be a JSON object.")
    return parsed
