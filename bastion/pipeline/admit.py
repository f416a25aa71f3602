"""Phase ``admit``: may this request run now? Rate limits, concurrency, token budgets.

After the model is known, the request is counted against each of its buckets (see
:mod:`bastion.limits.plan`): its prompt is estimated from the body (a byte per four, an
over-estimate for text) and its completion is its ``max_tokens`` (or the configured default).
Refusals are 429 with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers (budgets:
``insufficient_quota``); a request too large for a limit even when idle is a 400.

:meth:`Admit.finish` runs on every exit of the request (the gateway's ``finally``): it
reconciles the reservation with the tokens the upstream reported, or with what was relayed
if the stream was cut, and releases the concurrency slot.

This phase also sets vLLM's ``priority`` field when priorities are configured, replacing
whatever the caller sent, and asks streams for their usage.
"""

from __future__ import annotations

from typing import Any

from bastion.errors import QuotaExceededError, RateLimitError
from bastion.limits.limiter import Limiter
from bastion.limits.plan import Planner
from bastion.observability.instruments import GatewayMetrics
from bastion.pipeline.context import RequestContext
from bastion.pipeline.meter import MAX_EVENT_BYTES, Meter, stream_usage_override

__all__ = ["Admit"]

_GENERATING = frozenset({"chat", "completions", "responses", "audio"})


class Admit:
    def __init__(
        self,
        planner: Planner,
        limiter: Limiter,
        default_max_tokens: int,
        *,
        account_usage: bool = False,
        metrics: GatewayMetrics | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._planner = planner
        self._limiter = limiter
        self._default = default_max_tokens
        self._account_usage = account_usage
        self._metrics = metrics
        """Usage records are kept: every request's token usage is read, limits or not."""
        self._max_event_bytes = max_event_bytes

    async def __call__(self, ctx: RequestContext, model: str) -> None:
        identity = ctx.identity
        assert identity is not None and ctx.endpoint is not None
        overrides: dict[str, Any] = {}
        priority = self._planner.priority(identity)
        if priority is not None and ctx.json is not None:
            overrides["priority"] = priority
        buckets = self._planner.plan(identity, model) if self._planner.active else ()
        prompt = len(ctx.body) // 4 + 1
        if buckets:
            completion = self._completion(ctx)
            metrics = self._metrics
            try:
                ctx.grant = await self._limiter.acquire(buckets, prompt, completion)
            except QuotaExceededError:
                if metrics is not None:
                    metrics.limiter_decision("quota_exceeded")
                raise
            except RateLimitError:
                if metrics is not None:
                    metrics.limiter_decision("rate_limited")
                raise
            if metrics is not None:
                metrics.limiter_decision("allowed")
        reading = self._account_usage or any(b.limit.counts_tokens for b in buckets)
        stream_options = stream_usage_override(ctx.json) if reading and ctx.json else None
        if stream_options is not None:
            overrides["stream_options"] = stream_options
        ctx.meter = Meter(
            prompt,
            reading=reading,
            strip=stream_options is not None,
            max_event_bytes=self._max_event_bytes,
        )
        if overrides:
            ctx.body_overrides = overrides

    def finish(self, ctx: RequestContext) -> None:
        grant = ctx.grant
        if grant is None:
            return
        prompt, completion = ctx.billed_tokens()
        self._limiter.finish(grant, prompt, completion)

    def _completion(self, ctx: RequestContext) -> int:
        assert ctx.endpoint is not None
        if ctx.endpoint.permission not in _GENERATING:
            return 0
        body = ctx.json or {}
        for field in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return self._default
