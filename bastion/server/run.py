"""Run the gateway: start a managed engine if needed, bind, serve, and clean up on exit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import resource
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator
from types import FrameType
from typing import Protocol, TextIO

import uvicorn

from bastion.admin.reloading import ReloadHandle
from bastion.app import Services, build_gateway
from bastion.auth.apikeys import ApiKeyRecord
from bastion.errors import ConfigError
from bastion.observability import logs
from bastion.observability.access_log import AccessLogWriter, format_json, format_text
from bastion.observability.listener import MetricsListener
from bastion.observability.watches import watch_certificate, watch_connections, watch_reloads
from bastion.server import notify
from bastion.server.protocol import ConnectionCounts, GuardedHttpToolsProtocol, protocol_class
from bastion.server.reload import GatewaySwitch, Reloader
from bastion.server.startup import open_store, startup_keys
from bastion.server.tls import CertificateReloader
from bastion.server.welcome import engine_model, listen_url, print_welcome
from bastion.settings import ModelSettings, Settings
from bastion.state import StateDir
from bastion.store.store import Store
from bastion.upstream.client import UpstreamPool
from bastion.upstream.engine import ManagedEngine

__all__ = ["Supervised", "configure_logging", "run", "serve"]

log = logging.getLogger("bastion")


def configure_logging(settings: Settings) -> None:
    """Every log line on standard error, in ``logging.format`` (see
    :mod:`bastion.observability.logs`)."""
    logs.configure(settings.logging.level, settings.logging.format)


def raise_open_file_limit(wanted: int = 1 << 20) -> int:
    """Raise the limit on open files (each stream holds two sockets) as far as allowed.

    The soft limit goes to the hard limit; a privileged process also lifts the hard limit to
    ``wanted``. Returns the soft limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (wanted, hard):
        if limit == resource.RLIM_INFINITY or limit <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
        except (ValueError, OSError):
            continue
        return limit
    return soft


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", "server") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Supervised(Protocol):
    """What :func:`serve` asks of its supervisor when it runs as one worker of several
    (``server.workers`` above 1; implemented by ``server/worker.py``)."""

    def listener(self) -> socket.socket:
        """The listening socket the supervisor bound once for every worker."""

    def engine_models(self) -> tuple[ModelSettings, ...]:
        """The managed engine's model: the supervisor runs the one engine."""

    def attach(self, reloader: Reloader, handle: ReloadHandle, services: Services) -> None:
        """From now on reloads (SIGHUP, admin API) and scrapes go through the supervisor."""

    def ready(self, url: str) -> None:
        """Serving now (the supervisor says so once every worker is)."""


async def serve(
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    on_ready: Callable[[str], None] | None = None,
    load: Callable[[], Settings] | None = None,
    source: str = "built-in defaults",
    supervised: Supervised | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM. ``on_ready`` gets the base URL once listening. With
    ``load`` (which reads the config file again), SIGHUP reloads the configuration. A worker
    of several is ``supervised``: it neither binds, nor runs the engine, nor greets."""
    state = StateDir(settings.state_path())
    engine: ManagedEngine | None = None
    models = settings.models
    pool = UpstreamPool(settings.upstream)
    store: Store | None = None
    services: Services | None = None
    listener: MetricsListener | None = None
    certificates: CertificateReloader | None = None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(  # until the gateway is built, a SIGHUP must not kill the process
        signal.SIGHUP, lambda: log.warning("SIGHUP during start-up: ignored; send it again")
    )
    try:
        if settings.store.enabled:
            store = await asyncio.to_thread(open_store, settings, state)
        if settings.uses_engine and supervised is not None:
            models = supervised.engine_models()
        elif settings.uses_engine:
            engine = ManagedEngine(settings.engine, state.ensure())
            log.info("starting the %s engine (model %s)", settings.engine.kind, engine.served_name)
            await engine.start()
            models = (engine_model(engine),)
        if not models:
            raise ConfigError("no model to serve: declare 'models' or enable 'engine'", "models")
        keys, welcome = await asyncio.to_thread(startup_keys, settings, state, store)
        services = Services(
            settings,
            keys=keys,
            pool=pool,
            access_log=AccessLogWriter(
                sys.stderr.buffer,
                format=format_json if settings.logging.format == "json" else format_text,
                max_write=select.PIPE_BUF if supervised is not None else None,
            ),
            store=store,
        )
        handle = ReloadHandle()
        switch = GatewaySwitch(build_gateway(settings, services, models, reload=handle))
        services.adopt(switch.gateway)
        reloader = Reloader(
            load or (lambda: settings),
            source,
            settings,
            services,
            switch,
            handle=handle,
            models_for=lambda s: models if s.uses_engine else s.models,
            keys_for=lambda s: _reload_keys(s, state, store, out),
            on_applied=_apply_log_level,
        )
        if services.metrics is not None and supervised is None:  # else the supervisor's count
            watch_reloads(services.metrics, reloader)
        if supervised is None:
            loop.add_signal_handler(signal.SIGHUP, reloader.on_signal)
        else:
            supervised.attach(reloader, handle, services)
        await services.start()
        listener = _metrics_listener(settings, services) if supervised is None else None
        if listener is not None:
            await listener.start()
        if supervised is not None:
            sock = supervised.listener()
        else:
            sock = bind(settings.server.host, settings.server.port)
        tls = settings.server.tls
        url = listen_url(sock, https=tls is not None)
        if tls is not None:
            certificates = CertificateReloader(tls)
            if services.metrics is not None:
                watch_certificate(services.metrics, certificates)
            await certificates.start()
        config = _uvicorn_config(settings, switch, _protocol(settings, services, certificates))
        config.load()
        serving = ", ".join(m.name for m in models)

        def started() -> None:  # accepting, and SIGTERM handled: say so
            if supervised is not None:
                supervised.ready(url)  # the supervisor says where, greets and tells systemd
            else:
                log.info("Bastion listening on %s serving %s", url, serving)
                notify.ready(f"serving {serving} on {url}")
                if welcome is not None:
                    print_welcome(out, url, models[0].name, welcome)
            if on_ready is not None:
                on_ready(url)

        server = _Server(config, settings.server.drain_delay, _on_drain(services), started)
        _tune_gc()
        await server.serve(sockets=[sock])
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        if certificates is not None:
            await certificates.stop()
        if listener is not None:
            await listener.stop()
        if services is not None:
            await services.stop()
        await pool.aclose()
        if store is not None:
            store.close()
        if engine is not None:
            await engine.stop()


class _Server(uvicorn.Server):
    """uvicorn's server, with Bastion's own start (on_started) and stop (a drain delay).

    ``on_started`` runs once it accepts connections and handles those signals. The first
    SIGTERM or SIGINT calls ``on_drain`` (``/ready`` turns 503), and the server goes on
    accepting and serving for ``drain_delay`` seconds, so that load balancers take the
    gateway out before it stops listening; a second signal ends the delay. Then uvicorn
    drains: it closes the listener and lets what is in flight finish.

    uvicorn's own ``capture_signals`` re-raises the signal it caught once it has shut down,
    which kills the process before the caller's clean-up runs: the last access-log lines,
    audit events and last-used times would be lost and the store left unclosed. This one
    routes the signals to uvicorn's ``handle_exit`` the same way and raises nothing after:
    Bastion finishes its clean-up instead. (uvicorn's ``serve`` enters ``capture_signals``;
    tests/unit/test_uvicorn_internals.py checks that it still does.)
    """

    def __init__(
        self,
        config: uvicorn.Config,
        drain_delay: float,
        on_drain: Callable[[], None],
        on_started: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self.stop_signals: list[int] = []
        self._drain_delay = drain_delay
        self._on_drain = on_drain
        self._on_started = on_started
        self._drain_began: float | None = None  # monotonic time of the first signal
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: flags only, and the rest scheduled on the loop (logging here
        # could re-enter a stream the interrupted code was writing to).
        if self._drain_began is None:
            self._drain_began = time.monotonic()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._draining, sig)
            if self._drain_delay > 0:
                return
        elif not self.should_exit and self._loop is not None:
            self._loop.call_soon_threadsafe(log.info, "second signal: drain delay cut short")
        super().handle_exit(sig, frame)

    def _draining(self, sig: int) -> None:
        self._on_drain()
        delay = self._drain_delay
        name = signal.Signals(sig).name
        if delay > 0 and not self.should_exit:
            log.info("%s: not ready; still serving for %g s before draining", name, delay)
        else:
            log.info("%s: not ready; draining", name)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()

    async def on_tick(self, counter: int) -> bool:
        began = self._drain_began
        if began is not None and time.monotonic() - began >= self._drain_delay:
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread (as uvicorn's)
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.stop_signals:
                names = ", ".join(signal.Signals(n).name for n in self.stop_signals)
                log.info("stopping (%s): clean-up done by Bastion", names)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.stop_signals.append(sig)
        self.handle_exit(sig, frame)  # uvicorn's: drain, and a second SIGINT forces the exit


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_drain(services: Services) -> Callable[[], None]:
    def drain() -> None:
        services.draining = True
        if services.metrics is not None:
            services.metrics.set_draining(True)
        notify.stopping("draining: not ready, finishing what is in flight")

    return drain


def _tune_gc() -> None:
    """Keep the cyclic garbage collector from pausing streams.

    Everything built at start-up (settings, route table, pools) is moved out of the
    collector's sight, and young-generation collections run less often: per-request objects
    are freed by reference counting, and a full collection over thousands of open streams
    otherwise stalls every stream for tens of milliseconds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 1_000)


def _metrics_listener(settings: Settings, services: Services) -> MetricsListener | None:
    address = settings.metrics.address
    if address is None or services.metrics is None:
        return None
    return MetricsListener(*address, services.metrics.render)


def _reload_keys(
    settings: Settings, state: StateDir, store: Store | None, out: TextIO
) -> list[ApiKeyRecord]:
    """The keys a reloaded configuration starts with; a bootstrap key made now (the reload
    removed every other way in) is shown as at start."""
    keys, welcome = startup_keys(settings, state, store)
    if welcome is not None and welcome.new_key is not None:
        out.write(f"\nNew administrator API key (shown this once): {welcome.new_key}\n\n")
        out.flush()
    return keys


def _apply_log_level(settings: Settings) -> None:
    logging.getLogger().setLevel(settings.logging.level.upper())


def _protocol(
    settings: Settings, services: Services, certificates: CertificateReloader | None
) -> type[GuardedHttpToolsProtocol]:
    """The connections' protocol class; under TLS it does the handshake itself (uvicorn is
    given no TLS context), so that the handshake counts against the request head's deadline
    and the per-address bound applies before it."""
    protocol = protocol_class(
        settings.http,
        tls=certificates.context if certificates is not None else None,
        peer_certificates=_verifies_clients(settings),
    )
    if services.metrics is not None:
        watch_connections(services.metrics, ConnectionCounts(protocol))
    return protocol


def _uvicorn_config(
    settings: Settings, app: object, protocol: type[GuardedHttpToolsProtocol]
) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=protocol,
        ws="none",
        lifespan="off",
        interface="asgi3",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is never believed by default
        log_config=None,
        timeout_keep_alive=int(settings.http.keep_alive_timeout),
        timeout_graceful_shutdown=math.ceil(settings.server.drain_timeout),
    )


def _verifies_clients(settings: Settings) -> bool:
    tls = settings.server.tls
    return tls is not None and tls.client_ca is not None


def run(
    settings: Settings,
    *,
    load: Callable[[], Settings] | None = None,
    source: str = "built-in defaults",
) -> None:
    """Blocking entry point for the CLI: serve on uvloop until stopped."""
    import uvloop

    configure_logging(settings)
    limit = raise_open_file_limit()
    log.debug("open file limit: %d", limit)
    uvloop.run(serve(settings, load=load, source=source))
