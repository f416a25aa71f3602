"""The gateway's Prometheus metrics: what is counted, under which names and labels.

Labels are bounded by the configuration, never by callers: the route is a route of the
allowlist, the model a configured model (anything else is ``-``), the status a class
(``2xx``), the upstream a configured ``host:port``. No key id, user name or request text is
ever a label. A per-team label exists only when an operator turns it on, and then only for
the first ``max_teams`` teams seen (later ones count as ``other``).

Names follow Prometheus conventions (base units, ``_total`` counters) and, for generation
timings, the OpenTelemetry GenAI semantic conventions (``gen_ai.server.time_to_first_token``
and ``gen_ai.server.time_per_output_token``, as Prometheus names).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from bastion.observability.metrics import (
    TOKEN_LATENCY_BUCKETS,
    TTFT_BUCKETS,
    Merge,
    Registry,
)
from bastion.settings import MetricsSettings
from bastion.upstream.balancer import UpstreamSet

__all__ = ["GatewayMetrics"]

_CODES = {n: f"{n}xx" for n in range(1, 6)}
LabeledValues = Iterable[tuple[tuple[str, ...], float]]


class GatewayMetrics:
    """Every metric of one gateway process; survives configuration reloads."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.registry = r = Registry()
        self._teams_on = settings.team_label
        self._max_teams = settings.max_teams
        self._teams: set[str] = set()
        self._models: frozenset[str] = frozenset()
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
        self._ttft = r.histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first byte of a streamed generation.",
            ("model",),
            TTFT_BUCKETS,
        )
        self._tpot = r.histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Mean time between output tokens of a streamed generation (inter-token latency).",
            ("model",),
            TOKEN_LATENCY_BUCKETS,
        )
        self._tokens = r.counter(
            "bastion_tokens_total",
            "Tokens billed, by model and type (input: prompt, output: completion).",
            ("model", "type", *team),
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

    # -- the request path ---------------------------------------------------------------

    def set_models(self, names: Iterable[str]) -> None:
        """The configured models (a reload changes them): only these become labels."""
        self._models = frozenset(names)

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
    ) -> None:
        """Count one finished request (called by ``account``): ``tokens`` are the billed
        (prompt, completion) tokens when usage was read, ``stream_ttfb`` the time to the
        first byte of a streamed response."""
        model = model if model in self._models else "-"
        assert model is not None
        code = _CODES.get(status // 100, "none")
        self._duration.observe((route, model, code), seconds)
        team = self._team(teams) if self._teams_on else None
        self._requests.inc((route, model, code) if team is None else (route, model, code, team))
        completion = 0
        if tokens is not None:
            prompt, completion = tokens
            if team is None:
                self._tokens.inc((model, "input"), prompt)
                self._tokens.inc((model, "output"), completion)
            else:
                self._tokens.inc((model, "input", team), prompt)
                self._tokens.inc((model, "output", team), completion)
        if stream_ttfb is not None and status == 200:
            self._ttft.observe((model,), stream_ttfb)
            generated = completion or content_events
            if generated > 1:
                self._tpot.observe((model,), max(0.0, seconds - stream_ttfb) / (generated - 1))

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
