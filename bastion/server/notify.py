"""Telling systemd how the gateway is doing (``Type=notify``), with no library.

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` in its environment: the path
of a datagram socket (or, starting with ``@``, the name of an abstract one). The service
sends it newline-separated ``KEY=value`` lines: ``READY=1`` once it serves (until then
``systemctl start`` waits, and units ordered after it wait too), ``RELOADING=1`` when a
reload begins and ``READY=1`` again when it is done, ``STOPPING=1`` when it begins to stop,
``STATUS=...`` for ``systemctl status`` to show.

Without ``NOTIFY_SOCKET`` (not under systemd, or a worker process whose parent speaks for
it) every function here does nothing. A message that cannot be sent is logged once and
never raised: the gateway serves whether or not systemd hears about it.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["ready", "reloading", "send", "status", "stopping"]

log = logging.getLogger("bastion")

_warned = False


def ready(text: str | None = None) -> None:
    """The gateway serves (after start-up, and after a reload)."""
    send("READY=1", _status(text))


def reloading(text: str | None = "reloading the configuration") -> None:
    """A reload begins; :func:`ready` ends it. systemd needs the monotonic time with it."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    send("RELOADING=1", f"MONOTONIC_USEC={usec}", _status(text))


def stopping(text: str | None = "stopping") -> None:
    """The gateway begins to stop (a drain is under way)."""
    send("STOPPING=1", _status(text))


def status(text: str) -> None:
    """A one-line status for ``systemctl status``."""
    send(_status(text))


def send(*lines: str) -> bool:
    """Send ``lines`` as one notification; False when there is nowhere to send it or it
    could not be sent."""
    address = _address(os.environ.get("NOTIFY_SOCKET", ""))
    message = "\n".join(line for line in lines if line)
    if address is None or not message:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        _warn(exc)
        return False
    return True


def _address(value: str) -> str | bytes | None:
    """The socket's address: a path, or an abstract name (``@name`` -> ``\\0name``)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # unset, or nothing systemd would give (a relative path, vsock)


def _status(text: str | None) -> str:
    if not text:
        return ""
    return "STATUS=" + " ".join(text.split())  # one line: a newline would start another key


def _warn(exc: OSError) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("cannot notify systemd (NOTIFY_SOCKET): %s", exc.strerror or exc)
