"""The gateway's Prometheus metrics: what is counted, under which names and labels.

Labels are bounded by the configuration, never by callers: the route is a route of the
allowlist, the model a configured model (anything else is ``-``, or an empty
``gen_ai_request_model``), the status a class (``2xx``), the upstream a configured
``host:port``, an error type one of the gateway's error codes or an HTTP status. No key id,
user name or request text is ever a label. A per-team label exists only when an operator
turns it on, and then only for the first ``max_teams`` teams seen (later ones count as
``other``).

Two families of names. The gateway's own (``bastion_*``) follow Prometheus conventions (base
units, ``_total`` counters) and cover every route. Generative AI operations (the routes of
:data:`GEN_AI_OPERATIONS`) are also measured under the OpenTelemetry GenAI semantic
conventions (v1.41.0, the last release that holds them in open-telemetry/semantic-conventions):
``gen_ai.server.request.duration``, ``gen_ai.server.time_to_first_token``,
``gen_ai.server.time_per_output_token`` and ``gen_ai.client.token.usage`` (the gateway is the
model server's client), with the attributes and bucket boundaries the conventions give. Their
Prometheus names follow OpenTelemetry's Prometheus compatibility rules: dots become
underscores, the unit ``s`` becomes a ``_seconds`` suffix and an annotation unit such as
``{token}`` is dropped, so ``gen_ai.client.token.usage`` is ``gen_ai_client_token_usage``.
docs/operations.md lists both families.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType

from bastion.observability.metrics import Merge, Registry
from bastion.settings import MetricsSettings
from bastion.upstream.balancer import UpstreamSet

__all__ = [
    "GEN_AI_OPERATIONS",
    "REQUEST_DURATION_BUCKETS",
    "TOKEN_BUCKETS",
    "TPOT_BUCKETS",
    "TTFT_BUCKETS",
    "GatewayMetrics",
]

_CODES = {n: f"{n}xx" for n in range(1, 6)}
LabeledValues = Iterable[tuple[tuple[str, ...], float]]

GEN_AI_OPERATIONS: Mapping[str, str] = MappingProxyType(
    {
        "/v1/chat/completions": "chat",
        "/v1/messages": "chat",
        "/v1/responses": "chat",
        "/v1/completions": "text_completion",
        "/v1/embeddings": "embeddings",
    }
)
"""``gen_ai.operation.name`` of the routes that are generative AI operations (the conventions'
well-known values; the Responses API is ``chat``). Other routes have no ``gen_ai_*`` series."""

# Bucket boundaries the GenAI semantic conventions recommend for each instrument.
REQUEST_DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
"""``gen_ai.server.request.duration``, seconds."""

TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""``gen_ai.server.time_to_first_token``, seconds (queueing and prefill)."""

TPOT_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
"""``gen_ai.server.time_per_output_token``, seconds (decoding)."""

TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**n) for n in range(14))
"""``gen_ai.client.token.usage``: 1, 4, 16, ... 67108864 tokens."""

_GEN_AI = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
)


class _Series:
    """The label values of one operation on one model, made once (not per request)."""

    __slots__ = ("base", "input", "ok", "output")

    def __init__(self, base: tuple[str, str, str, str]) -> None:
        self.base = base
        self.ok = (*base, "")
        self.input = (*base, "input")
        self.output = (*base, "output")


class GatewayMetrics:
    """Every metric of one gateway process; survives configuration reloads.

    ``provider`` is the ``gen_ai.provider.name`` of every GenAI series: what serves the
    models (``vllm``, or the managed engine's kind)."""

    def __init__(self, settings: MetricsSettings, provider: str = "vllm") -> None:
        self.registry = r = Registry()
        self._teams_on = settings.team_label
        self._max_teams = settings.max_teams
        self._teams: set[str] = set()
        self._models: frozenset[str] = frozenset()
        self._provider = provider
        self._gen_ai: dict[str, dict[str, _Series]]
        """route -> model -> its GenAI label values; the model ``""`` stands for any model
        that is not configured."""
        self._available: Callable[[], LabeledValues] = lambda: ()
        self._gather: Callable[[], Awaitable[bytes]] | None = None
        team = ("team",) if self._teams_on else ()
        self._requests = r.counter(
            "bastion_requests_total",
            "Requests answered, by route, model and status class.",
            ("route", "model", "code", *team),
        )
        self._duration = r.histogram(
            "bastion_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ("route", "model", "code"),
        )
        self._tokens = r.counter(
            "bastion_tokens_total",
            "Tokens billed, by model and type (input: prompt, output: completion).",
            ("model", "type", *team),
        )
        self._operations = r.histogram(
            "gen_ai_server_request_duration_seconds",
            "Generative AI operations: time from the request's arrival to the end of its "
            "response; error_type set when it ended in an error.",
            (*_GEN_AI, "error_type"),
            REQUEST_DURATION_BUCKETS,
        )
        self._ttft = r.histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first byte of a streamed generation answered 200.",
            _GEN_AI,
            TTFT_BUCKETS,
        )
        self._tpot = r.histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Mean time between output tokens of a streamed generation answered 200.",
            _GEN_AI,
            TPOT_BUCKETS,
        )
        self._usage = r.histogram(
            "gen_ai_client_token_usage",
            "Tokens billed per generative AI operation, by type (input, output).",
            (*_GEN_AI, "gen_ai_token_type"),
            TOKEN_BUCKETS,
        )
        self._limits = r.counter(
            "bastion_limiter_decisions_total",
            "Admission decisions of the limiter: allowed, rate_limited, quota_exceeded.",
            ("decision",),
        )
        self._auth = r.counter(
            "bastion_auth_failures_total",
            "Refused authentications, by reason (missing, invalid, blocked).",
            ("reason",),
        )
        self._draining = r.gauge(
            "bastion_draining",
            "1 while the gateway shuts down and drains the requests in flight; 0 otherwise.",
        )
        r.gauge_function(
            "bastion_model_upstreams_available",
            "Upstreams of the model that can take a request now (health checks pass, not "
            "ejected); at 0 its requests are answered 503 no_healthy_upstream.",
            ("model",),
            lambda: self._available(),
        )
        self.set_models(())

    # -- the request path ---------------------------------------------------------------

    def set_models(
        self,
        names: Iterable[str],
        served: Mapping[str, str] | None = None,
        available: Callable[[], LabeledValues] | None = None,
    ) -> None:
        """The configured models (a reload changes them): only these become labels.
        ``served`` maps a model to the name its upstreams know it by, when it differs (its
        ``gen_ai_response_model``); ``available`` counts, at scrape time, the upstreams of
        each model that can take a request (``((model,), count)`` pairs)."""
        renamed = served or {}
        self._models = frozenset(names)
        provider = self._provider
        self._gen_ai = {
            route: {
                name: _Series((operation, provider, name, renamed.get(name, name)))
                for name in (*self._models, "")
            }
            for route, operation in GEN_AI_OPERATIONS.items()
        }
        if available is not None:
            self._available = available

    def request(
        self,
        route: str,
        model: str | None,
        status: int,
        seconds: float,
        teams: tuple[str, ...],
        tokens: tuple[int, int] | None,
        stream_ttfb: float | None,
        content_events: int,
        error: str | None = None,
    ) -> None:
        """Count one finished request (called by ``account``): ``tokens`` are the billed
        (prompt, completion) tokens when usage was read, ``stream_ttfb`` the time to the
        first byte of a streamed response, ``error`` the gateway's error code when the
        request ended in one."""
        label = model if model is not None and model in self._models else "-"
        code = _CODES.get(status // 100, "none")
        self._duration.observe((route, label, code), seconds)
        team = self._team(teams) if self._teams_on else None
        self._requests.inc((route, label, code) if team is None else (route, label, code, team))
        if tokens is not None:
            prompt, completion = tokens
            if team is None:
                self._tokens.inc((label, "input"), prompt)
                self._tokens.inc((label, "output"), completion)
            else:
                self._tokens.inc((label, "input", team), prompt)
                self._tokens.inc((label, "output", team), completion)
        by_model = self._gen_ai.get(route)
        if by_model is not None:
            series = by_model.get(model or "") or by_model[""]
            if error is not None:
                key = (*series.base, error)
            elif status >= 400:  # the upstream's own error answer, or 499: the caller left
                key = (*series.base, str(status))
            else:
                key = series.ok
            self._operations.observe(key, seconds)
            self._generation(series, status, seconds, tokens, stream_ttfb, content_events)

    def _generation(
        self,
        series: _Series,
        status: int,
        seconds: float,
        tokens: tuple[int, int] | None,
        stream_ttfb: float | None,
        content_events: int,
    ) -> None:
        """The GenAI token usage and, for a streamed 200, its generation timings."""
        completion = 0
        if tokens is not None:
            prompt, completion = tokens
            if prompt:
                self._usage.observe(series.input, prompt)
            if completion:
                self._usage.observe(series.output, completion)
        if stream_ttfb is not None and status == 200:
            self._ttft.observe(series.base, stream_ttfb)
            generated = completion or content_events
            if generated > 1:
                self._tpot.observe(series.base, max(0.0, seconds - stream_ttfb) / (generated - 1))

    def set_draining(self, draining: bool) -> None:
        """Whether the gateway is draining (``bastion_draining``): set when a shutdown
        begins."""
        self._draining.set((), 1.0 if draining else 0.0)

    def auth_failed(self, reason: str) -> None:
        self._auth.inc((reason,))

    def limiter_decision(self, decision: str) -> None:
        self._limits.inc((decision,))

    def _team(self, teams: tuple[str, ...]) -> str:
        if not teams:
            return "-"
        team = teams[0]
        if team in self._teams:
            return team
        if len(self._teams) < self._max_teams:
            self._teams.add(team)
            return team
        return "other"

    # -- state read at scrape time -------------------------------------------------------

    def watch_upstreams(self, upstreams: UpstreamSet) -> None:
        r = self.registry
        labels = ("upstream",)

        def each(value: Callable[..., float]) -> Callable[[], LabeledValues]:
            return lambda: [((u.name,), value(u)) for u in upstreams.all()]

        r.gauge_function(
            "bastion_upstream_healthy",
            "1 when the upstream's active health checks pass.",
            labels,
            each(lambda u: float(u.healthy)),
            merge="min",  # several workers: 1 only while every worker's checks pass
        )
        r.gauge_function(
            "bastion_upstream_ejected",
            "1 while the upstream is ejected for failing requests (passive health).",
            labels,
            each(lambda u: float(u.ejected)),
            merge="max",  # several workers: 1 while any worker has it ejected
        )
        r.gauge_function(
            "bastion_upstream_in_flight",
            "Requests in flight.",
            labels,
            each(lambda u: u.outstanding),
        )
        r.counter_function(
            "bastion_upstream_requests_total", "Attempts sent.", labels, each(lambda u: u.requests)
        )
        r.counter_function(
            "bastion_upstream_failures_total",
            "Attempts that failed (connection, timeout, 502/503/504).",
            labels,
            each(lambda u: u.errors),
        )
        r.counter_function(
            "bastion_upstream_retries_total",
            "Failed attempts retried on another upstream.",
            labels,
            each(lambda u: u.retries),
        )
        r.counter_function(
            "bastion_upstream_ejections_total",
            "Times the upstream was ejected.",
            labels,
            each(lambda u: u.ejections),
        )

    def watch_count(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere (fail-open decisions, dropped log lines, reloads)."""
        self.registry.counter_function(name, help, (), lambda: [((), read())])

    def watch_gauge(
        self, name: str, help: str, read: Callable[[], float], merge: Merge = "sum"
    ) -> None:
        """A value read at scrape time (how long the store's keys stay trusted); ``merge``
        says how several workers' values combine."""
        self.registry.gauge_function(name, help, (), lambda: [((), read())], merge)

    # -- scrapes --------------------------------------------------------------------------

    def render(self) -> bytes:
        """This process's metrics in the text format."""
        return self.registry.render()

    def gather_with(self, gather: Callable[[], Awaitable[bytes]]) -> None:
        """Answer scrapes with ``gather`` instead (a worker: the whole gateway's metrics,
        merged by the supervisor)."""
        self._gather = gather

    async def exposition(self) -> bytes:
        """What a scrape answers: this process's metrics, or what ``gather_with`` gives."""
        if self._gather is None:
            return self.registry.render()
        return await self._gather()
