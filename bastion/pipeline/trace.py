"""One request's trace while it runs: its ids, the head sampling decision, clock readings.

Made by :class:`bastion.pipeline.tracing.Tracer` when tracing is on (``ctx.trace``; None
otherwise) and turned into spans there when the request ends. Nothing here is an
OpenTelemetry object: ids are plain integers, times ``time.perf_counter()`` readings.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

from bastion.errors import GatewayError
from bastion.upstream.balancer import Upstream

__all__ = ["Attempt", "Trace", "error_type", "parse_traceparent"]

_TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_MODEL = re.compile(rb'"model"\s*:\s*"([A-Za-z0-9_.:/@+-]{1,256})"')
_REASON = re.compile(rb'"(?:finish_reason|stop_reason)"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')
_MAX_REASONS = 16


def error_type(error: GatewayError) -> str:
    """The ``error.type`` of a gateway error: its OpenAI code (``upstream_timeout``)."""
    return error.code or type(error).__name__


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent id, flags) of a version-00 ``traceparent``, or None when it is not
    one (an all-zero id is invalid)."""
    found = _TRACEPARENT.fullmatch(value.strip())
    if found is None:
        return None
    trace_id, parent_id = int(found[1], 16), int(found[2], 16)
    if not trace_id or not parent_id:
        return None
    return trace_id, parent_id, int(found[3], 16)


class Attempt:
    """One request to an upstream: the ``CLIENT`` span it becomes."""

    __slots__ = ("ended", "error", "model", "span_id", "started", "status", "upstream")

    def __init__(self, span_id: int, upstream: Upstream, model: str | None) -> None:
        self.span_id = span_id
        self.upstream = upstream
        self.model = model
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.status = 0
        self.error: str | None = None

    def failed(self, error: str, status: int = 0) -> None:
        self.ended = time.perf_counter()
        self.error = error
        self.status = status


class Trace:
    """One request's trace while it runs: ids, the head decision, clock readings."""

    __slots__ = (
        "admitted",
        "attempts",
        "authenticated",
        "authorized",
        "finish_reasons",
        "parent_id",
        "reads_answer",
        "response_model",
        "sampled",
        "span_id",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self,
        trace_id: int,
        parent_id: int | None,
        tracestate: bytes | None,
        sampled: bool,
        reads_answer: bool = False,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = random.getrandbits(64) or 1
        self.parent_id = parent_id
        """The caller's span (a trusted ``traceparent``), else None: a root span."""
        self.tracestate = tracestate
        self.sampled = sampled
        self.reads_answer = reads_answer
        """Read the answer's model and finish reasons (sampled chat and completions only:
        the others would pay for it and likely never be exported)."""
        self.authenticated: float | None = None
        self.authorized: float | None = None
        self.admitted: float | None = None
        self.attempts: list[Attempt] = []
        self.response_model: str | None = None
        self.finish_reasons: list[str] | None = None

    def attempt(self, upstream: Upstream, model: str | None) -> list[tuple[bytes, bytes]]:
        """A new upstream attempt: the trace context headers to send with it."""
        attempt = Attempt(random.getrandbits(64) or 1, upstream, model)
        self.attempts.append(attempt)
        flags = "01" if self.sampled else "00"
        value = f"00-{self.trace_id:032x}-{attempt.span_id:016x}-{flags}".encode()
        if self.tracestate is None:
            return [(b"traceparent", value)]
        return [(b"traceparent", value), (b"tracestate", self.tracestate)]

    def failed(self, error: str, status: int = 0) -> None:
        """The latest attempt failed before its response was relayed."""
        if self.attempts:
            self.attempts[-1].failed(error, status)

    def read_answer(self, body: bytes) -> None:
        """The answer's model and finish reasons (a whole body, or a piece of a stream)."""
        if self.response_model is None:
            found = _MODEL.search(body)
            if found is not None:
                self.response_model = found[1].decode()
        if b'_reason":"' in body or b'_reason": "' in body:  # not the usual "...": null
            reasons = self.finish_reasons
            if reasons is None:
                reasons = self.finish_reasons = []
            for reason in _REASON.findall(body):
                text = reason.decode()
                if text not in reasons and len(reasons) < _MAX_REASONS:
                    reasons.append(text)

    def watching(self, relayed: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        """``relayed`` (the per-piece function of a body) that also reads the answer."""
        read = self.read_answer

        def traced(piece: bytes) -> bytes:
            read(piece)
            return relayed(piece)

        return traced
