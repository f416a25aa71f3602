"""Phase ``admit``: may this request run now? Rate limits, concurrency, token budgets.

After the model is known, the request is counted against each of its buckets (see
:mod:`bastion.limits.plan`): its prompt is estimated from the body (a byte per four, an
over-estimate for text) and its completion is its ``max_tokens`` (or the configured default),
for each of its ``n`` choices. These fields are read the way the engine reads them (an
integral float such as ``5e9`` is that integer); a value the engine would read otherwise or
not at all is refused with a 400 naming the field, so no request reserves less than it may
generate.
Refusals are 429 with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers (budgets:
``insufficient_quota``); a request too large for a limit even when idle is a 400.

:meth:`Admit.finish` runs on every exit of the request (the gateway's ``finally``): it
reconciles the reservation with the tokens the upstream reported, or with what was relayed
if the stream was cut, and releases the concurrency slot.

This phase also sets vLLM's ``priority`` field when priorities are configured, replacing
whatever the caller sent, and asks streams for their usage.

A request on a stored response (reading, replaying or cancelling it) counts against request
rates and concurrency, and reserves and bills no tokens: nothing is generated.
"""

from __future__ import annotations

from typing import Any

from bastion.errors import BadRequestError, QuotaExceededError, RateLimitError
from bastion.limits.limiter import Limiter
from bastion.limits.plan import Planner
from bastion.observability.instruments import GatewayMetrics
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import Endpoint, EndpointKind
from bastion.pipeline.meter import MAX_EVENT_BYTES, Meter, stream_usage_override

__all__ = ["Admit"]

_STREAM_OPTIONS = frozenset({"chat", "completions"})
_GENERATING = frozenset({"chat", "completions", "responses", "audio"})
_CHOICES = frozenset({"chat", "completions"})
"""Routes whose ``n`` asks for several completions, each up to the token limit."""
_TOKEN_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


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
        # a stored response's request generates nothing: it counts as a request, no tokens
        generating = ctx.endpoint.kind is EndpointKind.INFERENCE
        completion = self._completion(ctx) if generating else 0
        buckets = self._planner.plan(identity, model) if self._planner.active else ()
        prompt = len(ctx.body) // 4 + 1 if generating else 0
        if buckets:
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
        if not generating:
            return  # no meter: nothing to bill
        reading = self._account_usage or any(b.limit.counts_tokens for b in buckets)
        stream_options = (
            stream_usage_override(ctx.json)
            if reading and ctx.json and _asks_for_usage(ctx.endpoint)
            else None
        )
        if stream_options is not None:
            overrides["stream_options"] = stream_options
        ctx.meter = Meter(
            prompt,
            reading=reading,
            strip=stream_options is not None,
            max_event_bytes=self._max_event_bytes,
        )
        if overrides:
            ctx.override(overrides)

    def finish(self, ctx: RequestContext) -> None:
        grant = ctx.grant
        if grant is None:
            return
        prompt, completion = ctx.billed_tokens()
        self._limiter.finish(grant, prompt, completion)

    def _completion(self, ctx: RequestContext) -> int:
        """The completion tokens to reserve: the largest token limit the body sets (engines
        differ in which one they obey) or the default, for each of its ``n`` choices."""
        assert ctx.endpoint is not None
        permission = ctx.endpoint.permission
        if permission not in _GENERATING:
            return 0
        body = ctx.json
        if body is None:
            return self._default
        _check_stream(body)
        asked = 0
        for field in _TOKEN_LIMITS:  # a loop, not max() over a generator: per request
            if field in body:
                asked = max(asked, _count(body, field, least=0) or 0)
        choices = _count(body, "n", least=1) if permission in _CHOICES else None
        return (asked or self._default) * (choices or 1)


def _count(body: dict[str, Any], name: str, *, least: int) -> int | None:
    """``body[name]`` as vLLM reads an integer field (pydantic, lax: an integral float is
    that integer), None when absent or null. A fraction, a string or a boolean (which the
    engine might read as a number) and anything below ``least`` are refused."""
    value = body.get(name)
    if value is None:
        return None
    kind = type(value)
    if kind is float and value.is_integer():
        value = int(value)
    elif kind is not int:
        raise BadRequestError(f"'{name}' must be an integer.", param=name, code="invalid_type")
    if value < least:
        raise BadRequestError(
            f"'{name}' must be at least {least}.", param=name, code="integer_below_min_value"
        )
    return int(value)


def _check_stream(body: dict[str, Any]) -> None:
    """``stream`` and ``stream_options.include_usage`` must be booleans: the engine would
    read "true" or 1 as true, the gateway (which asks a stream for its usage) would not."""
    _boolean(body.get("stream"), "stream")
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise BadRequestError(
            "'stream_options' must be an object.", param="stream_options", code="invalid_type"
        )
    _boolean(options.get("include_usage"), "stream_options.include_usage")


def _boolean(value: Any, name: str) -> None:
    if value is not None and type(value) is not bool:
        raise BadRequestError(f"'{name}' must be a boolean.", param=name, code="invalid_type")


def _asks_for_usage(endpoint: Endpoint) -> bool:
    """Whether a stream of this endpoint reports usage only when asked (OpenAI's chat and
    completions; Anthropic's and the Responses API's streams always report it)."""
    return endpoint.permission in _STREAM_OPTIONS and not endpoint.anthropic
