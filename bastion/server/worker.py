"""One worker of several (``server.workers`` above 1): serves on the supervisor's socket.

A worker is a fresh interpreter that the supervisor (:mod:`bastion.server.workers`) starts
as ``python -m bastion _worker CHANNEL_FD LISTENER_FD``; both descriptors are inherited.
Everything else comes over the channel (:mod:`bastion.server.channel`), never on the command
line or in the environment: the configuration text the supervisor validated, and the managed
engine's address and key. The worker then runs :func:`~bastion.server.run.serve` like a
single gateway, except that:

- it accepts on the inherited socket and greets no one (the supervisor prints the welcome);
- a reload, asked by SIGHUP or the admin API, goes to the supervisor, which validates the
  file once and has every worker apply the same text;
- ``/bastion/metrics`` answers with the whole gateway's metrics, gathered by the supervisor;
- when the supervisor goes away (its end of the channel closes), the worker drains and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from bastion.admin.reloading import ReloadHandle, ReloadReport
from bastion.app import Services
from bastion.errors import BastionError, ConfigError, ServiceUnavailableError
from bastion.observability.snapshots import encode
from bastion.server.channel import Channel
from bastion.server.reload import Reloader, keep_fixed
from bastion.server.run import configure_logging, raise_open_file_limit, serve
from bastion.settings import ModelSettings, Settings
from bastion.sources import ConfigSource, server_flags

__all__ = ["WorkerLink", "run_worker"]

log = logging.getLogger("bastion")

_HELLO_TIMEOUT = 30.0
_ASK_TIMEOUT = 60.0
"""Longest wait for the supervisor's answer to a reload (every worker applies it) or a
scrape (every worker is asked)."""


def run_worker(channel_fd: int, listener_fd: int) -> int:
    """The worker process's entry point (``bastion _worker``); its exit status."""
    import uvloop

    return uvloop.run(_work(channel_fd, listener_fd))


async def _work(channel_fd: int, listener_fd: int) -> int:
    link = WorkerLink(socket.socket(fileno=channel_fd), listener_fd)
    await link.start()
    try:
        settings = await link.hello()
        configure_logging(settings)
        formatter = logging.Formatter(
            f"%(asctime)s %(levelname)s %(name)s: [worker {link.index}] %(message)s"
        )
        for handler in logging.getLogger().handlers:
            handler.setFormatter(formatter)
        raise_open_file_limit()
        await serve(settings, load=link.load, source=link.source.name, supervised=link)
    except BastionError as exc:  # its supervisor says what it makes of this
        sys.stderr.write(f"bastion: worker {link.index}: error: {exc}\n")
        return 2
    finally:
        await link.close()
    return 0


class WorkerLink:
    """The worker's side of the channel, and what :func:`serve` asks of a supervisor."""

    def __init__(self, channel: socket.socket, listener_fd: int) -> None:
        self._channel = Channel(channel, self._answer)
        self._listener_fd = listener_fd
        self._models: tuple[ModelSettings, ...] = ()
        self._reloader: Reloader | None = None
        self._services: Services | None = None
        self._text: str | None = None
        self._watch: asyncio.Task[None] | None = None
        self.index = 0
        self.source = ConfigSource()

    async def start(self) -> None:
        await self._channel.start()
        self._watch = asyncio.create_task(self._watch_supervisor(), name="bastion-supervisor")

    async def hello(self) -> Settings:
        """What to serve, from the supervisor: the settings it validated, as this worker's."""
        boot: dict[str, Any] = await self._channel.ask("hello", timeout=_HELLO_TIMEOUT)
        self.index = int(boot["index"])
        self.source = ConfigSource(
            None if boot["path"] is None else Path(boot["path"]), server_flags(boot["server"])
        )
        self._models = tuple(ModelSettings.model_validate(m) for m in boot["engine_models"])
        # As started, then as reloaded since: restart-only settings keep their first values
        settings = self.source.parse(boot["started_text"])
        self._text = boot["text"]
        if self._text != boot["started_text"]:
            settings = keep_fixed(settings, self.source.parse(self._text))[0]
        return settings

    def load(self) -> Settings:
        """The configuration the supervisor handed over with its reload."""
        return self.source.parse(self._text)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self._channel.close()

    # -- what serve() asks -----------------------------------------------------------------

    def listener(self) -> socket.socket:
        sock = socket.socket(fileno=self._listener_fd)
        sock.setblocking(False)
        return sock

    def engine_models(self) -> tuple[ModelSettings, ...]:
        if not self._models:
            raise ConfigError("the supervisor runs no engine", "engine")
        return self._models

    def attach(self, reloader: Reloader, handle: ReloadHandle, services: Services) -> None:
        self._reloader = reloader
        self._services = services
        handle.bind(self._reload_everywhere)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        if services.metrics is not None:
            services.metrics.gather_with(self._gather)

    def ready(self, url: str) -> None:
        log.info("serving %s (pid %d)", url, os.getpid())
        self._channel.tell("ready", {"pid": os.getpid()})

    # -- asking the supervisor ---------------------------------------------------------------

    async def _reload_everywhere(self) -> ReloadReport:
        """Admin API reload: the supervisor validates the file and every worker applies it."""
        try:
            answer = await self._channel.ask("reload", timeout=_ASK_TIMEOUT)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise ConfigError(f"the supervisor could not reload: {exc}") from None
        if "refused" in answer:
            raise ConfigError(answer["refused"])
        report = answer["report"]
        return ReloadReport(
            report["source"], tuple(report["models"]), tuple(report["restart_required"])
        )

    def _on_sighup(self) -> None:
        log.info("SIGHUP: asking the supervisor to reload every worker")
        self._channel.tell("reload")

    async def _gather(self) -> bytes:
        try:
            text: str = await self._channel.ask("metrics", timeout=_ASK_TIMEOUT)
        except (ConnectionError, TimeoutError, RuntimeError):
            raise ServiceUnavailableError(
                "The metrics of the other workers are out of reach."
            ) from None
        return text.encode()

    # -- answering the supervisor ------------------------------------------------------------

    async def _answer(self, op: str, args: dict[str, Any]) -> Any:
        if op == "reload":
            return await self._reload(args["text"])
        if op == "snapshot":
            metrics = self._services.metrics if self._services is not None else None
            return encode(metrics.registry.snapshot()) if metrics is not None else []
        raise ValueError(f"unknown request {op!r}")

    async def _reload(self, text: str | None) -> dict[str, Any]:
        if self._reloader is None:
            return {"refused": "this worker is still starting"}
        self._text = text
        try:
            report = await self._reloader.reload()
        except BastionError as exc:
            return {"refused": str(exc)}
        return {"report": report.public()}

    async def _watch_supervisor(self) -> None:
        """The supervisor gone (killed, crashed): drain and exit, as on SIGTERM."""
        await self._channel.closed()
        log.warning("the supervisor is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)
