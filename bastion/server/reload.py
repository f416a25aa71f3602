"""Applying a new configuration to a running gateway (SIGHUP, or ``POST /admin/v1/reload``).

The new file is read and validated, and a complete new gateway is built from it on top of the
same long-lived services (connections, limiter state, upstream health, the identity store).
Only then is it swapped in, in one assignment: requests already running finish in the old
gateway, the next one enters the new. An invalid file, or one whose secrets cannot be read,
is refused as a whole and the running configuration stays.

Some settings cannot change while the process runs (the listening address, the HTTP limits
baked into the server, the connection pool's timeouts, the limiter's backend, the managed
engine, the store's location). A reload keeps their running values and names them in its
report and in the log, so that the operator knows a restart is needed for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from bastion.admin.reloading import ReloadHandle, ReloadReport
from bastion.app import Services, build_gateway
from bastion.auth.apikeys import ApiKeyRecord
from bastion.errors import BastionError
from bastion.pipeline.gateway import Gateway
from bastion.server import notify
from bastion.settings import ModelSettings, Settings
from bastion.types import Receive, Scope, Send

__all__ = ["GatewaySwitch", "Reloader", "keep_fixed"]

log = logging.getLogger("bastion")

# section -> its fields that only a restart changes (None: the whole section)
_RESTART_ONLY: dict[str, tuple[str, ...] | None] = {
    "server": None,
    "http": None,
    "engine": None,
    "upstream": (
        "connect_timeout",
        "read_timeout",
        "stream_idle_timeout",
        "max_idle_connections",
        "idle_connection_ttl",
        "max_header_bytes",
        "max_headers",
    ),
    "store": (
        "enabled",
        "url",
        "poll_interval",
        "stale_after",
        "last_used_interval",
        "connect_timeout",
        "statement_timeout",
    ),
    "limits": ("backend", "redis", "on_backend_failure"),
    "usage": ("enabled", "retention_days", "max_pending"),
    "responses": None,
    "logging": ("format",),
    "metrics": None,
    "tracing": None,
}


class GatewaySwitch:
    """The ASGI application the server runs: hands each request to the current gateway."""

    __slots__ = ("gateway",)

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        return self.gateway(scope, receive, send)


def keep_fixed(running: Settings, new: Settings) -> tuple[Settings, tuple[str, ...]]:
    """``new`` with every restart-only setting set back to its running value, and the names
    of those that differed."""
    changed: list[str] = []
    update: dict[str, Any] = {}
    for section, fields in _RESTART_ONLY.items():
        old_part: BaseModel = getattr(running, section)
        new_part: BaseModel = getattr(new, section)
        if old_part == new_part:
            continue
        if fields is None:
            changed.append(section)
            update[section] = old_part
            continue
        kept = {
            f: getattr(old_part, f) for f in fields if getattr(old_part, f) != getattr(new_part, f)
        }
        if kept:
            changed.extend(f"{section}.{f}" for f in kept)
            update[section] = new_part.model_copy(update=kept)
    if running.uses_engine != new.uses_engine:
        changed.append("models (switching to or from the managed engine)")
        update["models"] = running.models
    return new.model_copy(update=update), tuple(changed)


class Reloader:
    """Re-reads the config file and swaps a new gateway in; one reload at a time.

    It binds ``handle`` (the admin API's way to ask for a reload) to itself, and hands the
    same handle to every gateway it builds.
    """

    def __init__(
        self,
        load: Callable[[], Settings],
        source: str,
        settings: Settings,
        services: Services,
        switch: GatewaySwitch,
        *,
        handle: ReloadHandle,
        models_for: Callable[[Settings], tuple[ModelSettings, ...]],
        keys_for: Callable[[Settings], Sequence[ApiKeyRecord]],
        on_applied: Callable[[Settings], None] | None = None,
    ) -> None:
        self._load = load
        self.source = source
        self.settings = settings
        self._services = services
        self._switch = switch
        self._models_for = models_for
        self._keys_for = keys_for
        self._on_applied = on_applied
        self._lock = asyncio.Lock()
        self._handle = handle
        handle.bind(self.reload)
        self.applied = 0
        """Reloads applied."""
        self.refused = 0
        """Reloads refused (the running configuration stayed)."""

    async def reload(self) -> ReloadReport:
        """Apply the file as it is now. Raises :class:`~bastion.errors.BastionError` (the
        running configuration untouched) when it is invalid."""
        async with self._lock:
            try:
                return await self._reload()
            except BastionError:
                self.refused += 1
                raise

    async def _reload(self) -> ReloadReport:
        new = await asyncio.to_thread(self._load)
        effective, restart = keep_fixed(self.settings, new)
        models = self._models_for(effective)
        keys = await asyncio.to_thread(self._keys_for, effective)
        # the last step that may fail: until here, nothing running has changed
        gateway = build_gateway(effective, self._services, models, reload=self._handle)
        await self._services.reconfigure(effective, keys)
        self._switch.gateway = gateway
        self._services.adopt(gateway)
        self.settings = effective
        self.applied += 1
        if self._on_applied is not None:
            self._on_applied(effective)
        return ReloadReport(self.source, tuple(m.name for m in models), restart)

    def on_signal(self) -> None:
        """SIGHUP: reload in the background and say in the log (and to systemd) how it
        went. Ignored once the gateway drains: it is stopping."""
        if self._services.draining:
            log.warning("SIGHUP while draining: ignored")
            return
        notify.reloading()
        asyncio.get_running_loop().create_task(self._reload_logged(), name="bastion-reload")

    async def _reload_logged(self) -> None:
        try:
            report = await self.reload()
        except BastionError as exc:
            log.error("configuration reload refused, the running one stays: %s", exc)
            notify.ready("reload refused, the running configuration stays (see the log)")
            return
        except Exception:
            log.exception("configuration reload failed, the running one stays")
            notify.ready("reload failed, the running configuration stays (see the log)")
            return
        notify.ready(f"configuration reloaded: serving {', '.join(report.models)}")
        log.info(
            "configuration reloaded from %s: serving %s",
            report.source,
            ", ".join(report.models),
        )
        if report.restart_required:
            log.warning(
                "these settings changed but only take effect after a restart: %s",
                ", ".join(report.restart_required),
            )
