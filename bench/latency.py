"""Latency at one connection, paired: requests alternate between the upstream and the gateway.

On a shared, noisy machine two runs minutes apart see different neighbours. Alternating one
request direct, one through the gateway, on two kept-alive connections, makes both series see
the same moments, so their difference is the gateway's. Blocking sockets keep the client's own
cost small and equal for both; the garbage collector is off while timing.
"""

from __future__ import annotations

import gc
import socket
import time
from dataclasses import dataclass, field

import httptools

from bench.wrk import CHAT_BODY

__all__ = ["LatencyTarget", "paired_latency"]


@dataclass(frozen=True)
class LatencyTarget:
    port: int
    auth: str | None


@dataclass
class _Series:
    samples: list[float] = field(default_factory=list)
    errors: int = 0


class _Conn:
    """One kept-alive connection that sends the same request again and again."""

    def __init__(self, target: LatencyTarget) -> None:
        lines = [
            "POST /v1/chat/completions HTTP/1.1",
            f"Host: 127.0.0.1:{target.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(CHAT_BODY)}",
        ]
        if target.auth:
            lines.append(f"Authorization: {target.auth}")
        self._request = ("\r\n".join(lines) + "\r\n\r\n" + CHAT_BODY).encode()
        self._port = target.port
        self._sock: socket.socket | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._complete = False
        self._keep_alive = True
        self._status = 0

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        # Asked here: once the callback returns, the parser has reset for the next message.
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self._port), timeout=10.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._parser = httptools.HttpResponseParser(self)
        return sock

    def once(self) -> float | None:
        """Seconds for one request and its whole response; None on any failure."""
        try:
            sock = self._sock = self._sock or self._connect()
            self._complete = False
            started = time.perf_counter()
            sock.sendall(self._request)
            while not self._complete:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by peer")
                self._parser.feed_data(data)
            elapsed = time.perf_counter() - started
        except (OSError, httptools.HttpParserError):
            self.close()
            return None
        if not self._keep_alive:
            self.close()
        return elapsed if self._status == 200 else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def paired_latency(targets: list[LatencyTarget], seconds: float) -> list[tuple[list[float], int]]:
    """For each target, its latencies (seconds) and error count, measured turn about."""
    conns = [_Conn(t) for t in targets]
    series = [_Series() for _ in targets]
    order = list(range(len(targets)))
    deadline = time.perf_counter() + seconds
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _round in range(10_000_000):
            if time.perf_counter() >= deadline:
                break
            order.reverse()  # neither target always goes first
            for i in order:
                took = conns[i].once()
                if took is None:
                    series[i].errors += 1
                else:
                    series[i].samples.append(took)
    finally:
        if gc_was_enabled:
            gc.enable()
        for conn in conns:
            conn.close()
    return [(s.samples, s.errors) for s in series]
