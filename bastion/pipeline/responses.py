"""The one place that writes responses the gateway makes itself: errors and small JSON bodies.

Errors use the OpenAI shape ``{"error": {"message", "type", "param", "code"}}`` so the
official clients raise the matching exception; on Anthropic's endpoints, Anthropic's shape
``{"type": "error", "error": {"type", "message"}}``, for the same reason. Once a response
has started its status cannot change: an event stream then gets an error event, anything
else is cut.
"""

from __future__ import annotations

from typing import Any

import orjson

from bastion.errors import GatewayError
from bastion.pipeline.context import RequestContext
from bastion.types import RESPOND_SCOPE_KEY, Respond

__all__ = [
    "anthropic_error_body",
    "error_body",
    "error_event",
    "send_error",
    "send_json",
    "send_whole",
]

_JSON = (b"content-type", b"application/json")


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": error.type,
                "param": error.param,
                "code": error.code,
            }
        }
    )


# Anthropic's error types by status, as its SDK maps them to exceptions
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_error_body(error: GatewayError) -> bytes:
    """The error in the Anthropic Messages API's shape."""
    status = error.status
    kind = _ANTHROPIC_TYPES.get(status) or (
        "api_error" if status >= 500 else "invalid_request_error"
    )
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})


def error_event(error: GatewayError, *, anthropic: bool = False) -> bytes:
    """A server-sent event carrying an error, for a stream that has already started."""
    if anthropic:
        return b"event: error\ndata: " + anthropic_error_body(error) + b"\n\n"
    return b"data: " + error_body(error) + b"\n\n"


async def send_whole(
    ctx: RequestContext, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Send a complete response; under Bastion's server its head and body leave in one write."""
    ctx.status = status
    ctx.response_started = True
    respond: Respond | None = ctx.scope.get(RESPOND_SCOPE_KEY)
    if respond is not None and respond(status, headers, body):
        ctx.response_done = True  # no ASGI message, no await: written at once
        ctx.response_bytes = len(body)
        return
    downstream = ctx.downstream
    if downstream is not None:
        downstream.cork()
    try:
        await ctx.send({"type": "http.response.start", "status": status, "headers": headers})
        ctx.response_done = True
        ctx.response_bytes = len(body)
        await ctx.send({"type": "http.response.body", "body": body})
    finally:
        if downstream is not None:
            downstream.uncork()


async def send_json(
    ctx: RequestContext,
    status: int,
    body: bytes | Any,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Send a complete JSON response (``body`` already serialized, or any JSON value)."""
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    head = [
        _JSON,
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", ctx.echoed_request_id.encode()),
        *headers,
    ]
    await send_whole(ctx, status, head, payload)


async def send_error(ctx: RequestContext, error: GatewayError) -> None:
    """Answer with ``error``; if a response is already under way, end it as well as it can be."""
    ctx.error = error
    endpoint = ctx.endpoint
    anthropic = endpoint is not None and endpoint.anthropic
    if not ctx.response_started:
        body = anthropic_error_body(error) if anthropic else error_body(error)
        headers = error.headers
        if endpoint is not None and endpoint.headers:
            headers = headers + endpoint.headers
        await send_json(ctx, error.status, body, headers)
        return
    if ctx.response_done or ctx.client_disconnected:
        return
    ctx.response_done = True
    if ctx.response_sse:
        # The last piece of the body: the server ends it (the final chunk), and the
        # connection stays usable. Relayed bytes that stop inside an event are closed off
        # first, so the error arrives as an event of its own and not glued to a broken one.
        event = error_event(error, anthropic=anthropic)
        if ctx.response_event_open:
            event = b"\n\n" + event
        await ctx.send({"type": "http.response.body", "body": event})
    # Anything else is left incomplete: the server closes the connection, so the client sees
    # a truncated response instead of a body that looks whole.
