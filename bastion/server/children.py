"""The supervisor's worker processes, one place each (``server/workers.py`` decides when).

A place keeps its number for good; the process in it changes when a worker dies and another
is started. A worker is a fresh interpreter, ``python -m bastion _worker CHANNEL LISTENER``,
that inherits two descriptors: its end of a private socket pair (the channel) and the
listening socket. It serves once it says ``ready`` over the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from bastion.server.channel import Channel, Handler

__all__ = ["WORKER_COMMAND", "Child", "how_it_ended"]

log = logging.getLogger("bastion")

WORKER_COMMAND = "_worker"
"""The hidden ``bastion`` command that runs a worker (``bastion.cli`` knows it too)."""


class Child:
    """One worker's place: its current process and channel."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.ready = asyncio.Event()
        """Set when the current process said it serves."""
        self.failed_starts = 0
        """Processes in a row that ended before they served."""
        self.text: str | None = None
        """The configuration text it runs (as handed over at its start, or its last reload)."""

    @property
    def serving(self) -> bool:
        return self.ready.is_set() and self.channel is not None and self.channel.open

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def spawn(self, listener: socket.socket, handler: Handler) -> asyncio.subprocess.Process:
        """Start a worker in this place, its channel answered by ``handler``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bastion", WORKER_COMMAND,
                str(theirs.fileno()), str(listener.fileno()),
                pass_fds=(theirs.fileno(), listener.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                env=_worker_environment(),
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.ready.clear()
        self.process = process
        self.channel = Channel(ours, handler)
        await self.channel.start()
        return process

    async def until_ready(self, timeout: float) -> bool:
        """Whether the worker came to serve; one that takes longer than ``timeout`` is killed."""
        process = self.process
        assert process is not None
        ready = asyncio.ensure_future(self.ready.wait())
        exited = asyncio.ensure_future(process.wait())
        done, _ = await asyncio.wait(
            {ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        ready.cancel()
        exited.cancel()
        if ready in done:
            return True
        if not done:
            log.error(
                "worker %d (pid %d) did not serve within %.0f s: killing it",
                self.index, process.pid, timeout,
            )  # fmt: skip
            self.signal(signal.SIGKILL)
        return False

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def forget(self) -> None:
        """The process is gone: close its channel."""
        self.ready.clear()
        if self.channel is not None:
            channel, self.channel = self.channel, None
            asyncio.get_running_loop().create_task(channel.close())


def how_it_ended(status: int) -> str:
    """A process's exit status in words."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _worker_environment() -> dict[str, str]:
    """The supervisor's environment less ``NOTIFY_SOCKET``: only the supervisor speaks to
    systemd (the unit's ``NotifyAccess=main`` would drop a worker's messages with a warning)."""
    return {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
