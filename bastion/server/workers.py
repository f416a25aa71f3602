"""Several cores: one supervisor, ``server.workers`` worker processes on one listening socket.

::

    supervisor (bastion serve)                     workers (bastion _worker: fresh interpreters)
      bind the port, once   ---- inherited fd ---->  accept on it, serve (server/run.py serve)
      run the managed engine, open the store          <- channel (server/channel.py) ->
      print the welcome and the first admin key        hello, ready, reload, snapshot, metrics
      SIGHUP: validate the file, then every worker applies the same text
      SIGTERM / SIGINT: every worker drains; then the engine stops
      a worker dies: restarted with backoff, logged once, counted
      metrics.listen, and any worker's /bastion/metrics: every worker's metrics, merged

Workers share the one socket rather than each binding the port (``SO_REUSEPORT``): the kernel
keeps one queue of connections, so those a worker had not accepted yet when it died are
served by the others instead of being reset. No process forks after an event loop exists:
workers are new interpreters, and all they need that is secret (the configuration text, the
engine's key) comes over their private channel, never on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from bastion.app import Services, build_gateway
from bastion.auth.apikeys import ApiKeyRecord
from bastion.errors import BastionError, ConfigError
from bastion.observability.listener import MetricsListener
from bastion.observability.metrics import Registry
from bastion.observability.snapshots import Gathered
from bastion.server import notify
from bastion.server.children import Child, how_it_ended
from bastion.server.reload import keep_fixed
from bastion.server.run import bind, configure_logging
from bastion.server.startup import open_store, startup_keys
from bastion.server.tls import CertificateReloader
from bastion.server.welcome import engine_model, listen_url, print_welcome
from bastion.settings import ModelSettings, Settings
from bastion.sources import ConfigSource
from bastion.state import StateDir
from bastion.store.store import Store
from bastion.upstream.client import UpstreamPool
from bastion.upstream.engine import ManagedEngine

__all__ = ["Supervisor", "SupervisorHooks", "supervise"]

log = logging.getLogger("bastion")

_READY_TIMEOUT = 60.0
"""A worker that has not served this long after its start is killed: a failed start."""
_MAX_FAILED_STARTS = 4
"""Failed starts of one worker in a row before the supervisor gives up and exits."""
_BACKOFF_START = 0.5
_BACKOFF_MAX = 30.0
_STABLE = 60.0
"""A worker that served this long before dying is restarted without delay growing."""
_SCRAPE_TIMEOUT = 5.0
_RELOAD_TIMEOUT = 60.0
_KILL_GRACE = 10.0
"""After ``server.drain_delay`` and ``server.drain_timeout``, how long workers get to finish
their clean-up."""


@dataclass(frozen=True, slots=True)
class SupervisorHooks:
    """Moments of the gateway as a whole, for a service manager (systemd's ``sd_notify``)."""

    on_ready: Callable[[str], None] | None = None
    """Every worker serves; gets the base URL."""
    on_reloading: Callable[[], None] | None = None
    on_reloaded: Callable[[], None] | None = None
    """A reload ended (applied or refused)."""
    on_stopping: Callable[[], None] | None = None


def supervise(
    source: ConfigSource,
    text: str | None,
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    hooks: SupervisorHooks | None = None,
) -> int:
    """Blocking entry point for the CLI: run ``settings.server.workers`` workers until
    stopped; the exit status. Raises :class:`~bastion.errors.BastionError` when the gateway
    cannot start (or its workers keep failing to)."""
    configure_logging(settings)
    hooks = hooks if hooks is not None else _systemd_hooks()
    return asyncio.run(Supervisor(source, text, settings, out=out, hooks=hooks).run())


def _systemd_hooks() -> SupervisorHooks:
    """The gateway's moments told to systemd (nothing without ``NOTIFY_SOCKET``)."""
    return SupervisorHooks(
        on_ready=lambda url: notify.ready(f"serving on {url}"),
        on_reloading=notify.reloading,
        on_reloaded=lambda: notify.ready("reload done (see the log)"),
        on_stopping=lambda: notify.stopping("draining the workers"),
    )


class Supervisor:
    def __init__(
        self,
        source: ConfigSource,
        text: str | None,
        settings: Settings,
        *,
        out: TextIO = sys.stdout,
        hooks: SupervisorHooks | None = None,
    ) -> None:
        self._source = source
        self._started_text = self._text = text
        self._settings = settings
        self._out = out
        self._hooks = hooks or SupervisorHooks()
        self._state = StateDir(settings.state_path())
        self._slots = [Child(i) for i in range(1, settings.server.workers + 1)]
        self._keepers: list[asyncio.Task[None]] = []
        self._sock: socket.socket | None = None
        self._store: Store | None = None
        self._engine: ManagedEngine | None = None
        self._engine_models: tuple[ModelSettings, ...] = ()
        self._listener: MetricsListener | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._fatal: str | None = None
        self._serving = False
        self._reload_lock = asyncio.Lock()
        self._gathered = Gathered()
        """The workers' metrics as last gathered, and what dead ones counted."""
        self.restarts = 0
        """Workers restarted after they died."""
        self.stale_scrapes = 0
        """Scrapes that used a worker's last metrics because it did not answer in time."""
        self.reloads_applied = 0
        self.reloads_refused = 0
        self._metrics = self._own_metrics()

    # -- the life of the gateway ---------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        starting = asyncio.create_task(self._start(), name="bastion-start")
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a start that failed raises here
                await stopped
            else:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            stopped.cancel()
            clean = await self._shut_down()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        if self._fatal is not None:
            raise BastionError(self._fatal)
        return 0 if clean else 1

    async def _start(self) -> None:
        settings = self._settings
        if settings.store.enabled:
            self._store = await asyncio.to_thread(open_store, settings, self._state)
        models = settings.models
        if settings.uses_engine:
            self._engine = ManagedEngine(settings.engine, self._state.ensure())
            log.info(
                "starting the %s engine (model %s)", settings.engine.kind, self._engine.served_name
            )
            await self._engine.start()
            models = self._engine_models = (engine_model(self._engine),)
        if not models:
            raise ConfigError("no model to serve: declare 'models' or enable 'engine'", "models")
        # once, here: the workers find the key made (or the store's administrator) and make none
        keys, welcome = await asyncio.to_thread(startup_keys, settings, self._state, self._store)
        _try_build(settings, models, keys)
        if settings.server.tls is not None:
            CertificateReloader(settings.server.tls)  # loads the files: refused here, not N times
        await self._start_listener()
        self._sock = bind(settings.server.host, settings.server.port)
        url = listen_url(self._sock, https=settings.server.tls is not None)
        self._keepers = [
            asyncio.create_task(self._keep(slot), name=f"bastion-worker-{slot.index}")
            for slot in self._slots
        ]
        await asyncio.gather(*(slot.ready.wait() for slot in self._slots))
        self._serving = True
        names = ", ".join(m.name for m in models)
        log.info("Bastion listening on %s serving %s (%d workers)", url, names, len(self._slots))
        if welcome is not None:
            print_welcome(self._out, url, models[0].name, welcome)
        if self._hooks.on_ready is not None:
            self._hooks.on_ready(url)

    async def _start_listener(self) -> None:
        address = self._settings.metrics.address
        if address is not None and self._settings.metrics.enabled:
            self._listener = MetricsListener(*address, self.exposition)
            await self._listener.start()

    def _on_stop_signal(self, signum: int) -> None:
        if not self._stopping:
            log.info(
                "stopping (%s): draining %d workers", signal.Signals(signum).name, len(self._slots)
            )
        self._stopping = True
        self._stop.set()

    async def _shut_down(self) -> bool:
        """Drain every worker, then stop the engine; whether every worker stopped cleanly."""
        self._stopping = True
        if self._hooks.on_stopping is not None:
            self._hooks.on_stopping()
        clean = await self._stop_workers()
        if self._listener is not None:
            await self._listener.stop()
        if self._store is not None:
            self._store.close()
        if self._engine is not None:
            await self._engine.stop()
        return clean

    async def _stop_workers(self) -> bool:
        """SIGTERM to every worker, SIGKILL to those still there after the drain; whether
        every one exited cleanly."""
        for keeper in self._keepers:  # no restarts from now on
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()  # the workers' copies stay open while they drain
        running = [s for s in self._slots if s.alive]
        for slot in running:
            slot.signal(signal.SIGTERM)
        grace = (
            self._settings.server.drain_delay + self._settings.server.drain_timeout + _KILL_GRACE
        )
        waits = [asyncio.ensure_future(s.process.wait()) for s in running if s.process]
        _, late = await asyncio.wait(waits, timeout=grace) if waits else (set(), set())
        for slot in running:
            if slot.alive:
                log.error(
                    "worker %d still running %.0f s after SIGTERM: killing it", slot.index, grace
                )
                slot.signal(signal.SIGKILL)
        if late:
            await asyncio.wait(late)
        for slot in running:
            slot.forget()
        return not late and all(s.process and s.process.returncode == 0 for s in running)

    # -- keeping each worker running -------------------------------------------------------------

    async def _keep(self, slot: Child) -> None:
        """Run the slot's worker; when it dies, start another (backing off while they die young)."""
        delay = _BACKOFF_START
        while not self._stopping:
            began = time.monotonic()
            assert self._sock is not None
            process = await slot.spawn(self._sock, functools.partial(self._answer, slot))
            served = await slot.until_ready(_READY_TIMEOUT)
            status = await process.wait()
            self._gathered.depart(slot.index)  # what it counted stays counted
            slot.forget()
            if self._stopping:
                return
            slot.failed_starts = 0 if served else slot.failed_starts + 1
            how = how_it_ended(status) + ("" if served else " before it served")
            if not self._serving or slot.failed_starts >= _MAX_FAILED_STARTS:
                tries = "" if not self._serving else f" {slot.failed_starts} times in a row"
                self._give_up(f"worker {slot.index} {how}{tries}; stopping")
                return
            delay = _BACKOFF_START if time.monotonic() - began > _STABLE else delay
            self.restarts += 1
            log.warning(
                "worker %d (pid %d) %s; restarting it in %.1f s (restart %d)",
                slot.index, process.pid, how, delay, self.restarts,
            )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)

    def _give_up(self, why: str) -> None:
        log.error("%s", why)
        self._fatal = why
        self._stopping = True
        self._stop.set()

    # -- what workers ask ----------------------------------------------------------------------

    async def _answer(self, slot: Child, op: str, args: dict[str, Any]) -> Any:
        if op == "hello":
            slot.text = self._text
            return {
                "index": slot.index,
                "path": None if self._source.path is None else str(self._source.path),
                "server": {where[-1]: value for where, value in self._source.flags.values()},
                "started_text": self._started_text,
                "text": self._text,
                "engine_models": [m.model_dump(mode="json") for m in self._engine_models],
            }
        if op == "ready":
            slot.ready.set()
            if slot.text != self._text:  # a reload happened while it was starting
                await self._reload_worker(slot, self._text)
            return None
        if op == "reload":
            try:
                report = await self.reload()
            except BastionError as exc:
                return {"refused": str(exc)}
            return {"report": report}
        if op == "metrics":
            return (await self.exposition()).decode()
        raise ValueError(f"unknown request {op!r}")

    # -- reloads -------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        asyncio.get_running_loop().create_task(self._reload_quietly(), name="bastion-reload")

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(BastionError):
            await self.reload()  # reload() logged how it went

    async def reload(self) -> dict[str, Any]:
        """Validate the file as it is now, then have every worker apply it; the report (as
        the admin API shows it). Raises :class:`~bastion.errors.BastionError` (nothing
        changed) when the file is refused."""
        async with self._reload_lock:
            if self._hooks.on_reloading is not None:
                self._hooks.on_reloading()
            try:
                report = await self._reload()
            except BastionError as exc:
                self.reloads_refused += 1
                log.error("configuration reload refused, the running one stays: %s", exc)
                raise
            finally:
                if self._hooks.on_reloaded is not None:
                    self._hooks.on_reloaded()
        self.reloads_applied += 1
        log.info(
            "configuration reloaded from %s: serving %s",
            report["source"],
            ", ".join(report["models"]),
        )
        if report["restart_required"]:
            log.warning(
                "these settings changed but only take effect after a restart: %s",
                ", ".join(report["restart_required"]),
            )
        return report

    async def _reload(self) -> dict[str, Any]:
        text = await asyncio.to_thread(self._source.read)
        effective, restart = keep_fixed(self._settings, self._source.parse(text))
        problem = effective.workers_problem
        if problem is not None:
            raise ConfigError(problem, "limits")
        keys = await asyncio.to_thread(self._bootstrap_if_needed, effective)
        models = self._engine_models if effective.uses_engine else effective.models
        _try_build(effective, models, keys)
        before, self._text = self._text, text  # what workers started from now on get
        slots = [s for s in self._slots if s.serving]
        answers = await asyncio.gather(*(self._reload_worker(s, text) for s in slots))
        applied = [a["report"] for a in answers if "report" in a]
        refused = [(s, a["refused"]) for s, a in zip(slots, answers, strict=True) if "refused" in a]
        if not applied and refused:
            self._text = before
            raise ConfigError(refused[0][1])
        for slot, why in refused:
            log.error(
                "worker %d refused the configuration the others applied (%s): restarting it",
                slot.index,
                why,
            )
            slot.signal(signal.SIGTERM)
        names = [m.name for m in models]
        return {"source": self._source.name, "models": names, "restart_required": list(restart)}

    async def _reload_worker(self, slot: Child, text: str | None) -> dict[str, Any]:
        channel = slot.channel
        if channel is None:
            return {"refused": f"worker {slot.index} is gone"}
        try:
            answer: dict[str, Any] = await channel.ask(
                "reload", {"text": text}, timeout=_RELOAD_TIMEOUT
            )
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            return {"refused": f"worker {slot.index} did not answer ({exc or type(exc).__name__})"}
        if "report" in answer:
            slot.text = text
        return answer

    def _bootstrap_if_needed(self, settings: Settings) -> list[ApiKeyRecord]:
        """The keys ``settings`` starts with. A reload that removed every other way in gets a
        bootstrap key, made (and shown) once, here: the workers then find it."""
        keys, welcome = startup_keys(settings, self._state, self._store)
        if welcome is not None and welcome.new_key is not None:
            self._out.write(f"\nNew administrator API key (shown this once): {welcome.new_key}\n\n")
            self._out.flush()
        return keys

    # -- metrics -------------------------------------------------------------------------------

    def _own_metrics(self) -> Registry:
        registry = Registry()
        registry.gauge_function(
            "bastion_workers",
            "Worker processes serving (server.workers of them when all is well).",
            (),
            lambda: [((), float(sum(s.serving for s in self._slots)))],
        )
        registry.counter_function(
            "bastion_worker_restarts_total",
            "Workers restarted by the supervisor after they died.",
            (),
            lambda: [((), float(self.restarts))],
        )
        registry.counter_function(  # the gateway's reloads, not one per worker
            "bastion_config_reloads_total",
            "Configuration reloads applied.",
            (),
            lambda: [((), float(self.reloads_applied))],
        )
        registry.counter_function(
            "bastion_config_reload_failures_total",
            "Configuration reloads refused (the running configuration stayed).",
            (),
            lambda: [((), float(self.reloads_refused))],
        )
        registry.counter_function(
            "bastion_metrics_stale_workers_total",
            "Scrapes that showed a worker's last gathered metrics: it did not answer in time.",
            (),
            lambda: [((), float(self.stale_scrapes))],
        )
        return registry

    async def exposition(self) -> bytes:
        """Every worker's metrics as of now, merged, with the supervisor's own."""
        await asyncio.gather(*(self._gather(s) for s in self._slots if s.serving))
        return self._gathered.render(self._metrics.snapshot())

    async def _gather(self, slot: Child) -> None:
        assert slot.channel is not None
        try:
            data = await slot.channel.ask("snapshot", timeout=_SCRAPE_TIMEOUT)
        except (ConnectionError, TimeoutError, RuntimeError):
            self.stale_scrapes += 1  # its last answer is shown
            return
        self._gathered.update(slot.index, data)


def _try_build(
    settings: Settings, models: tuple[ModelSettings, ...], keys: Sequence[ApiKeyRecord]
) -> None:
    """Build a gateway for ``settings`` as each worker will, and drop it: what a worker would
    refuse (a role that does not exist, an unreadable secret or htpasswd file), the supervisor
    refuses first, once, before any worker is started or asked to reload."""
    services = Services(settings, keys=keys, pool=UpstreamPool(settings.upstream))
    build_gateway(settings, services, models)
