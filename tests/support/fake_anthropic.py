"""Anthropic's Messages API as vLLM serves it (``/v1/messages``, ``/v1/messages/count_tokens``),
for the fake upstream: JSON answers and SSE streams in Anthropic's event format.

vLLM reports the prompt in ``message_start.message.usage`` and the final totals (input and
output) in ``message_delta.usage``; Anthropic's own API reports only ``output_tokens`` in
``message_delta``. ``final_input`` picks which of the two the fake imitates.
"""

from __future__ import annotations

from typing import Any

import orjson

INPUT_TOKENS = 11
OUTPUT_TOKENS = 4
TEXT = "Hello from upstream"


def message(model: str) -> dict[str, Any]:
    return {
        "id": "msg_fake1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": TEXT}],
        "model": model,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
    }


def count_tokens() -> dict[str, Any]:
    return {"input_tokens": INPUT_TOKENS}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def stream_events(model: str, *, final_input: bool = True) -> list[bytes]:
    """The events of one streamed message: start, one text block of OUTPUT_TOKENS deltas,
    the final delta with usage, stop."""
    start = message(model) | {"content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": INPUT_TOKENS, "output_tokens": 0}
    final_usage = {"output_tokens": OUTPUT_TOKENS}
    if final_input:
        final_usage["input_tokens"] = INPUT_TOKENS
    deltas = [
        _event(
            "content_block_delta",
            {"index": 0, "delta": {"type": "text_delta", "text": piece}},
        )
        for piece in ("Hello", " from", " up", "stream")
    ]
    return [
        _event("message_start", {"message": start}),
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *deltas,
        _event("content_block_stop", {"index": 0}),
        _event(
            "message_delta",
            {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": final_usage},
        ),
        _event("message_stop", {}),
    ]
