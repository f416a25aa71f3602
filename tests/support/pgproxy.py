"""A TCP proxy in front of the test PostgreSQL that a test can freeze or cut.

The shared PostgreSQL server must never be stopped or paused (other tests use it), so faults
are made here, between Bastion and the server:

- ``freeze()``: nothing is forwarded either way, yet every socket stays open and new
  connections are accepted: a partition, or a server that stopped answering. What the client
  sends is held (the kernel acknowledges it, and TCP keepalives are answered), so only a
  deadline of the client's own notices. :attr:`stalled` counts the connections with a
  request held: calls waiting on the frozen store.
- ``drop()``: every connection is reset, and new ones are reset as soon as they arrive.
- ``forward()``: back to normal; what a freeze held (bytes, a close) is delivered: the
  partition healed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from enum import Enum
from urllib.parse import urlsplit, urlunsplit

from tests.support.databases import ADMIN_URL

__all__ = ["PgProxy"]


class Mode(Enum):
    FORWARD = "forward"
    FREEZE = "freeze"
    DROP = "drop"


def _reset(sock: socket.socket | None) -> None:
    """Close with a TCP RST (linger 0), as a crashed server or a middlebox would."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Link:
    """One client connection, its connection to the server (None until made), and the bytes
    held in each direction while frozen."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.server: socket.socket | None = None
        self.held: dict[socket.socket, bytearray] = {client: bytearray()}
        self.closed_by: socket.socket | None = None
        """The side that closed while frozen: the close is held too, like its bytes."""

    def peer(self, sock: socket.socket) -> socket.socket | None:
        return self.server if sock is self.client else self.client

    def sockets(self) -> list[socket.socket]:
        return [self.client] if self.server is None else [self.client, self.server]


class PgProxy:
    """Listens on 127.0.0.1 (a port of its own) and forwards to the test PostgreSQL."""

    def __init__(self, target_url: str = ADMIN_URL) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._links: dict[socket.socket, _Link] = {}
        self._mode = Mode.FORWARD
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pg-proxy", daemon=True)
        self._thread.start()

    def url(self, database_url: str) -> str:
        """``database_url`` (any scheme) with its host and port replaced by the proxy's."""
        parts = urlsplit(database_url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    @property
    def stalled(self) -> int:
        """Client connections whose request is held by a freeze (calls waiting on the store)."""
        with self._lock:
            return len({id(link) for link in self._links.values() if link.held[link.client]})

    def freeze(self) -> None:
        self._set(Mode.FREEZE)

    def drop(self) -> None:
        self._set(Mode.DROP)

    def forward(self) -> None:
        self._set(Mode.FORWARD)

    def close(self) -> None:
        self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in list(self._links):
            sock.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _set(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
        self._wake_w.send(b"x")

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                mode = self._mode
                if mode is Mode.DROP:
                    for link in set(self._links.values()):
                        self._end(link, reset=True)
                elif mode is Mode.FORWARD:
                    for link in set(self._links.values()):
                        self._release(link)
                watched = [self._wake_r, self._listener]
                watched += [s for s, link in self._links.items() if link.closed_by is not s]
            readable, _, _ = select.select(watched, [], [], 1.0)
            for sock in readable:
                if sock is self._wake_r:
                    self._wake_r.recv(4096)
                elif sock is self._listener:
                    self._accept()
                else:
                    self._pump(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        with self._lock:
            if self._mode is Mode.DROP:
                _reset(client)
                return
            link = _Link(client)
            self._links[client] = link
            if self._mode is Mode.FORWARD:
                self._release(link)

    def _release(self, link: _Link) -> None:
        """Connect to the server if not yet done, and deliver what was held (lock held)."""
        if link.server is None:
            try:
                link.server = socket.create_connection(self._target, timeout=5)
            except OSError:
                self._end(link, reset=True)
                return
            link.server.settimeout(None)
            link.held[link.server] = bytearray()
            self._links[link.server] = link
        for source, data in link.held.items():
            target = link.peer(source)
            if data and target is not None:
                try:
                    target.sendall(data)
                except OSError:
                    self._end(link, reset=True)
                    return
                data.clear()
        if link.closed_by is not None:
            self._end(link, reset=False)

    def _pump(self, sock: socket.socket) -> None:
        with self._lock:
            link = self._links.get(sock)
            if link is None:
                return
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                if self._mode is Mode.FREEZE:
                    link.closed_by = sock
                else:
                    self._end(link, reset=False)
                return
            link.held[sock] += data
            if self._mode is Mode.FORWARD:
                self._release(link)

    def _end(self, link: _Link, *, reset: bool) -> None:
        for sock in link.sockets():
            self._links.pop(sock, None)
            if reset:
                _reset(sock)
            else:
                sock.close()
