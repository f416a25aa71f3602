"""Finished spans, batched and exported to an OpenTelemetry collector over OTLP/HTTP.

The request path hands over spans already encoded (:mod:`.otlp`) with :meth:`add`: a list
append. One task on the event loop sends them in batches, every ``export_interval`` seconds
or sooner when a batch is full, one export at a time, on the gateway's own HTTP client. An
export that the collector cannot take now (connection failure, timeout, 429, 502, 503, 504)
is tried again with a growing pause, as the OTLP specification says; anything else drops the
batch. Spans that find the queue full are dropped. Both are counted, and logged once per
minute at most; header values are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

from bastion import __version__
from bastion.errors import ConfigError, UpstreamError
from bastion.observability import otlp
from bastion.settings import TracingSettings, UpstreamClientSettings
from bastion.upstream.client import UpstreamPool
from bastion.upstream.origin import Origin

__all__ = ["TraceExporter"]

log = logging.getLogger("bastion")

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_FIRST_PAUSE = 0.5
_ATTEMPTS = 4
_LOG_EVERY = 60.0


def _endpoint(url: str) -> tuple[Origin, bytes]:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ConfigError("tracing.endpoint must not carry credentials (use tracing.headers)")
    if parts.fragment or not parts.hostname:
        raise ConfigError("tracing.endpoint must be http(s)://host[:port]/path")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("tracing.endpoint has an invalid port") from None
    origin = Origin(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return origin, target.encode()


class TraceExporter:
    """Batches encoded spans and sends them to ``tracing.endpoint``. Made once per process
    (its settings change only with a restart); :meth:`start` and :meth:`stop` run on the
    event loop."""

    def __init__(self, settings: TracingSettings) -> None:
        self._origin, self._target = _endpoint(settings.endpoint)
        headers = [(b"content-type", b"application/x-protobuf")]
        headers += [
            (name.lower().encode("latin-1"), secret.resolve().encode("latin-1"))
            for name, secret in settings.headers.items()
        ]
        self._gzip = settings.compression == "gzip"
        if self._gzip:
            headers.append((b"content-encoding", b"gzip"))
        self._headers = headers
        self._timeout = settings.timeout
        self._max_queue = settings.max_queue_spans
        self._batch = settings.max_batch_spans
        self._interval = settings.export_interval
        attributes: dict[str, otlp.AttributeValue] = {
            "service.name": settings.service_name,
            "service.version": __version__,
            "service.instance.id": str(uuid.uuid4()),
            "telemetry.sdk.name": "bastion",
            "telemetry.sdk.language": "python",
            "telemetry.sdk.version": __version__,
        }
        attributes.update(settings.resource_attributes)
        self._resource = otlp.resource(attributes.items())
        self._scope = otlp.scope("bastion", __version__)
        self._pending: list[bytes] = []
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool: UpstreamPool | None = None
        self._logged_at = -_LOG_EVERY
        self._failing = False
        self.exported = 0
        """Spans the collector accepted."""
        self.dropped = 0
        """Spans lost: the queue was full, or their export failed for good."""
        self.failed_exports = 0
        """Exports that failed for good (after their retries)."""

    def add(self, spans: Sequence[bytes]) -> None:
        """Queue one request's spans (dropped and counted when the queue is full)."""
        pending = self._pending
        if len(pending) + len(spans) > self._max_queue:
            self.dropped += len(spans)
            return
        pending.extend(spans)
        full = self._full
        if full is not None and len(pending) >= self._batch and not full.is_set():
            full.set()

    def start(self) -> None:
        """Start exporting (on the running loop)."""
        if self._task is None:
            settings = UpstreamClientSettings(
                connect_timeout=self._timeout,
                read_timeout=self._timeout,
                stream_idle_timeout=self._timeout,
                max_idle_connections=2,
            )
            self._pool = UpstreamPool(settings)
            self._full = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="bastion-trace-export")

    async def stop(self, deadline: float | None = None) -> None:
        """Send what is queued (for up to ``deadline`` seconds, default ``tracing.timeout``),
        then stop."""
        task = self._task
        if task is None:
            return
        self._task = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            async with asyncio.timeout(self._timeout if deadline is None else deadline):
                while self._pending:
                    await self._export_batch(retry=False)
        except TimeoutError:
            pass
        self.dropped += len(self._pending)
        self._pending.clear()
        assert self._pool is not None
        await self._pool.aclose()

    async def _run(self) -> None:
        assert self._full is not None
        full = self._full
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await full.wait()
            full.clear()
            while self._pending:
                await self._export_batch(retry=True)
                if len(self._pending) < self._batch:
                    break

    async def _export_batch(self, *, retry: bool) -> None:
        batch = self._pending[: self._batch]
        del self._pending[: self._batch]
        try:
            await self._send(batch, retry=retry)
        except asyncio.CancelledError:  # stopping: the batch goes back, to be sent at once
            self._pending[:0] = batch
            raise

    async def _send(self, batch: list[bytes], *, retry: bool) -> None:
        body = otlp.export_request(self._resource, self._scope, batch)
        if self._gzip:
            body = gzip.compress(body, compresslevel=5)
        pause = _FIRST_PAUSE
        why = ""
        for attempt in range(_ATTEMPTS if retry else 1):
            if attempt:
                await asyncio.sleep(pause)
                pause *= 2
            outcome = await self._post(body)
            if outcome is None:
                self.exported += len(batch)
                self._recovered()
                return
            why, again = outcome
            if not again:
                break
        self.failed_exports += 1
        self.dropped += len(batch)
        self._failed(why)

    async def _post(self, body: bytes) -> tuple[str, bool] | None:
        """Send one export: None when accepted, else (why, whether to try again)."""
        assert self._pool is not None
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._pool.request(
                    self._origin, b"POST", self._target, self._headers, body
                )
                try:
                    await response.read()  # the answer (partial success) is not acted on
                finally:
                    response.close()
        except (UpstreamError, TimeoutError) as exc:
            return (getattr(exc, "code", None) or "timeout"), True
        if 200 <= response.status < 300:
            return None
        return f"HTTP {response.status}", response.status in _RETRY_STATUSES

    def _failed(self, why: str) -> None:
        self._failing = True
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            log.warning(
                "trace export to %s failed (%s); spans dropped so far: %d",
                self._origin.host,
                why,
                self.dropped,
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("trace export to %s works again", self._origin.host)
