"""Phase ``account``: runs for every request, served, refused or failed. Writes the access log.

The access log line names the request, the principal, the route, the model, the upstream,
the status and timings. It never holds a credential, a key hash, a query string or any of
the request's or response's content.
"""

from __future__ import annotations

import logging

import orjson

from bastion.pipeline.context import RequestContext
from bastion.settings import LoggingSettings

__all__ = ["Account"]

access_log = logging.getLogger("bastion.access")


class Account:
    def __init__(self, settings: LoggingSettings) -> None:
        self._enabled = settings.access_log
        self._json = settings.format == "json"

    def __call__(self, ctx: RequestContext) -> None:
        if not self._enabled or not access_log.isEnabledFor(logging.INFO):
            return
        route = ctx.route.path if ctx.route else "-"
        principal = ctx.identity.principal if ctx.identity else "-"
        status = 499 if ctx.client_disconnected and not ctx.response_done else ctx.status
        ttfb = None if ctx.time_to_first_byte is None else round(ctx.time_to_first_byte * 1000, 2)
        if self._json:
            access_log.info(
                orjson.dumps(
                    {
                        "request_id": ctx.request_id,
                        "client": ctx.client_host,
                        "method": ctx.method,
                        "route": route,
                        "model": ctx.model,
                        "principal": principal,
                        "upstream": ctx.upstream,
                        "status": status,
                        "error": ctx.error.code if ctx.error else None,
                        "bytes": ctx.response_bytes,
                        "latency_ms": round(ctx.elapsed_ms(), 2),
                        "ttfb_ms": ttfb,
                    }
                ).decode()
            )
            return
        access_log.info(
            '%s %s "%s %s" %d model=%s principal=%s upstream=%s latency_ms=%.2f ttfb_ms=%s%s',
            ctx.request_id,
            ctx.client_host,
            ctx.method,
            route,
            status,
            ctx.model or "-",
            principal,
            ctx.upstream or "-",
            ctx.elapsed_ms(),
            "-" if ttfb is None else ttfb,
            f" error={ctx.error.code}" if ctx.error else "",
        )
