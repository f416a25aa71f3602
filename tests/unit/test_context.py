"""What a request is billed: one answer for limits, usage records and metrics."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.pipeline.context import RequestContext
from bastion.pipeline.meter import Meter


async def _receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _send(message: dict[str, Any]) -> None:
    return None


def _context(**facts: Any) -> RequestContext:
    ctx = RequestContext({"type": "http", "method": "POST", "headers": []}, _receive, _send)
    ctx.meter = Meter(40, reading=True)
    for name, value in facts.items():
        setattr(ctx.meter if name in ("usage", "content_events") else ctx, name, value)
    return ctx


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({"status": 200, "usage": (12, 30), "response_done": True}, (12, 30)),
        # the caller went away mid-stream: billed for the events it got
        ({"status": 200, "response_sse": True, "content_events": 7,
          "client_disconnected": True}, (40, 7)),
        # ... unless the upstream's answer was an error: nothing was generated
        ({"status": 503, "response_sse": True, "content_events": 7,
          "client_disconnected": True}, (0, 0)),
        ({"status": 429, "response_done": True}, (0, 0)),
        # gone before any answer: the prompt was sent, nothing came back
        ({"status": 0, "client_disconnected": True}, (40, 0)),
    ],
)  # fmt: skip
def test_billed_tokens(facts: dict[str, Any], expected: tuple[int, int]) -> None:
    assert _context(**facts).billed_tokens() == expected


def test_without_a_meter_nothing_is_billed() -> None:
    """No meter: ``admit`` never ran (refused before, or not an inference request)."""
    ctx = _context(status=200, response_done=True, response_bytes=4000)
    ctx.meter = None
    assert ctx.billed_tokens() == (0, 0)
