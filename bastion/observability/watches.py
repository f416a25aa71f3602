"""Counters that long-lived services keep themselves, exported as metrics read at scrape time.

The request path pays nothing for these: each service counts in a plain attribute, and a
scrape reads it. This module owns the metric names and their help; the services are seen
only through the small protocols below, so observability knows nothing of the layers above.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from bastion.observability.instruments import GatewayMetrics
from bastion.upstream.balancer import UpstreamSet

__all__ = [
    "watch_certificate",
    "watch_connections",
    "watch_reloads",
    "watch_services",
    "watch_traces",
]


class Dropping(Protocol):
    @property
    def dropped(self) -> int:
        """Items lost because a queue was full or a sink could not be written."""


class Owning(Protocol):
    @property
    def dropped(self) -> int:
        """Owners of stored responses never written (the store away too long)."""

    @property
    def contested(self) -> int:
        """Response ids an upstream gave to a second principal."""


class Blocking(Protocol):
    @property
    def blocks(self) -> int:
        """Addresses blocked for repeated failed authentications."""


class Syncing(Protocol):
    @property
    def failures(self) -> int:
        """Failed reads or writes of the identity store."""

    @property
    def reloads(self) -> int:
        """Times the store's keys were reloaded."""


class Calling(Protocol):
    @property
    def failures(self) -> int:
        """Store calls that failed."""

    @property
    def timeouts(self) -> int:
        """Store calls that got no answer in time."""


class Reloading(Protocol):
    @property
    def applied(self) -> int:
        """Configuration reloads applied."""

    @property
    def refused(self) -> int:
        """Configuration reloads refused."""


class Exporting(Protocol):
    @property
    def exported(self) -> int:
        """Spans the collector accepted."""

    @property
    def dropped(self) -> int:
        """Spans lost: the queue was full, or their export failed for good."""

    @property
    def failed_exports(self) -> int:
        """Exports that failed for good."""


class Connecting(Protocol):
    @property
    def refused_connections(self) -> int:
        """Connections closed at once: their address held http.max_connections_per_address."""

    @property
    def write_timeouts(self) -> int:
        """Connections dropped: the caller left the gateway's writes unread too long."""


def watch_services(
    metrics: GatewayMetrics,
    upstreams: UpstreamSet,
    *,
    limiter: Callable[[], object | None],
    guard: Callable[[], Blocking | None],
    audit: Dropping,
    access_log: Dropping | None = None,
    usage: Dropping | None = None,
    owners: Owning | None = None,
    sync: Syncing | None = None,
    calls: Calling | None = None,
    keys_valid_until: Callable[[], float] | None = None,
) -> None:
    """Register the services' own counters. ``limiter`` and ``guard`` are read through
    callables because a reload may replace them; a limiter without a fallible backend has
    no failure counts (0)."""
    metrics.watch_upstreams(upstreams)
    watch = metrics.watch_count
    watch(
        "bastion_limiter_fail_open_total",
        "Requests let through because the limiter's backend failed (on_backend_failure: open).",
        lambda: getattr(limiter(), "fail_open_decisions", 0),
    )
    watch(
        "bastion_limiter_backend_failures_total",
        "Times the limiter's backend could not be reached.",
        lambda: getattr(limiter(), "failures", 0),
    )
    watch(
        "bastion_auth_blocked_addresses_total",
        "Times an address was blocked for repeated failed authentications.",
        lambda: _blocks(guard()),
    )
    if access_log is not None:
        watch(
            "bastion_access_log_dropped_total",
            "Access-log lines lost because the log could not be written.",
            lambda: access_log.dropped,
        )
    if sync is not None:
        _watch_store(metrics, sync, calls, keys_valid_until)
    watch(
        "bastion_audit_events_dropped_total",
        "Audit events of refused requests lost (the queue was full).",
        lambda: audit.dropped,
    )
    if usage is not None:
        watch(
            "bastion_usage_records_dropped_total",
            "Usage records lost before reaching the store (the queue was full).",
            lambda: usage.dropped,
        )
    if owners is not None:
        watch(
            "bastion_response_owners_dropped_total",
            "Owners of stored responses never written to the store (the queue was full): "
            "other replicas cannot serve those responses.",
            lambda: owners.dropped,
        )
        watch(
            "bastion_response_ids_contested_total",
            "Response ids an upstream gave to a second principal (then nobody's).",
            lambda: owners.contested,
        )


def watch_reloads(metrics: GatewayMetrics, reloader: Reloading) -> None:
    """Register the configuration reloader's counts."""
    metrics.watch_count(
        "bastion_config_reloads_total",
        "Configuration reloads applied.",
        lambda: reloader.applied,
    )
    metrics.watch_count(
        "bastion_config_reload_failures_total",
        "Configuration reloads refused (the running configuration stayed).",
        lambda: reloader.refused,
    )


def watch_connections(metrics: GatewayMetrics, connections: Connecting) -> None:
    """Register the server's counts of connections it closed."""
    metrics.watch_count(
        "bastion_connections_refused_total",
        "Connections closed at once because their address already held "
        "http.max_connections_per_address.",
        lambda: connections.refused_connections,
    )
    metrics.watch_count(
        "bastion_write_timeouts_total",
        "Connections dropped because the caller read nothing for http.write_timeout.",
        lambda: connections.write_timeouts,
    )


class Certified(Protocol):
    @property
    def not_after(self) -> float:
        """When the certificate in use expires (Unix time)."""


def watch_certificate(metrics: GatewayMetrics, certificates: Certified) -> None:
    """Register when the gateway's TLS certificate expires (it moves when the files are
    reloaded)."""
    metrics.watch_gauge(
        "bastion_tls_certificate_expiry_timestamp_seconds",
        "When the TLS certificate the gateway serves expires, in seconds since the epoch.",
        lambda: certificates.not_after,
    )


def watch_traces(metrics: GatewayMetrics, exporter: Exporting) -> None:
    """Register the trace exporter's counts."""
    metrics.watch_count(
        "bastion_trace_spans_exported_total",
        "Spans the OpenTelemetry collector accepted.",
        lambda: exporter.exported,
    )
    metrics.watch_count(
        "bastion_trace_spans_dropped_total",
        "Spans lost: the export queue was full (tracing.max_queue_spans), or the collector "
        "refused or did not answer.",
        lambda: exporter.dropped,
    )
    metrics.watch_count(
        "bastion_trace_export_failures_total",
        "Exports to the collector that failed after their retries.",
        lambda: exporter.failed_exports,
    )


def _blocks(guard: Blocking | None) -> int:
    return guard.blocks if guard is not None else 0


def _watch_store(
    metrics: GatewayMetrics,
    sync: Syncing,
    calls: Calling | None,
    keys_valid_until: Callable[[], float] | None,
) -> None:
    metrics.watch_count(
        "bastion_store_sync_failures_total",
        "Failed reads or writes of the identity store.",
        lambda: sync.failures,
    )
    metrics.watch_count(
        "bastion_store_key_reloads_total",
        "Times the store's keys were reloaded (an admin change on some replica).",
        lambda: sync.reloads,
    )
    if calls is not None:
        metrics.watch_count(
            "bastion_store_failures_total",
            "Store calls (admin API, sync) that failed: the store unreachable or silent.",
            lambda: calls.failures,
        )
        metrics.watch_count(
            "bastion_store_timeouts_total",
            "Store calls that got no answer within store.connect_timeout + statement_timeout.",
            lambda: calls.timeouts,
        )
    if keys_valid_until is not None:
        metrics.watch_gauge(
            "bastion_store_keys_valid_seconds",
            "Seconds the store's keys stay trusted without a successful poll "
            "(store.stale_after); at 0, store-issued keys are refused with 503.",
            lambda: max(0.0, min(1e9, keys_valid_until() - time.time())),
            merge="min",  # several workers: the one closest to refusing keys
        )
