"""A model server that answers with raw bytes chosen by the test: responses no HTTP framework
would write (a status of 600, a 1 MB header). A real socket on 127.0.0.1, port 0, served by
a thread; health checks (``GET /health``) get a plain 200."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading

HEALTHY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"


class RawUpstream:
    """Answers every other request with :attr:`reply`, then closes the connection."""

    def __init__(self) -> None:
        self.reply = HEALTHY
        self.requests = 0
        """Requests answered with :attr:`reply` (health checks not counted)."""
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._answer(self.request)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RawUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _answer(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in head:
                data = sock.recv(65536)
                if not data:
                    return
                head += data
            if head.startswith(b"GET /health "):
                sock.sendall(HEALTHY)
                return
            self.requests += 1
            sock.sendall(self.reply)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # until the gateway closes its end
                pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
