"""Which worker process holds which connection: read from ``/proc`` (Linux).

A gateway with ``server.workers`` above 1 serves from several processes that all accept on
one socket. A test that must reach every worker opens connections and asks the kernel which
process each one landed in: the connection's socket inode (``/proc/net/tcp``, by the
client's port) and the processes' open descriptors (``/proc/PID/fd``).
"""

from __future__ import annotations

import os
import re
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import orjson

from tests.support.gateway import GatewayProcess

_SERVING = re.compile(r"\[worker (\d+)\] serving \S+ \(pid (\d+)\)")


def worker_pids(logs: str) -> dict[int, int]:
    """``{worker index: pid}`` of the latest start of each worker named in the log."""
    return {int(index): int(pid) for index, pid in _SERVING.findall(logs)}


def _inodes_by_local_port(server_port: int) -> dict[int, int]:
    """Established connections to ``server_port``: ``{client port: socket inode}`` of the
    server's side."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == server_port:
                found[int(remote.rsplit(":", 1)[1], 16)] = inode
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fds = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fds):
        try:
            target = os.readlink(fds / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def holders(server_port: int, client_ports: list[int], pids: list[int]) -> dict[int, int]:
    """``{client port: pid of the worker holding that connection}`` (waits up to 5 s for
    each connection to have been accepted)."""
    deadline = time.monotonic() + 5
    while True:
        by_port = _inodes_by_local_port(server_port)
        owned = {pid: _socket_inodes(pid) for pid in pids}
        found = {
            port: pid
            for port in client_ports
            for pid, inodes in owned.items()
            if by_port.get(port) in inodes
        }
        if len(found) == len(client_ports) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def connections_held(server_port: int, pids: list[int]) -> dict[int, int]:
    """``{pid: connections to server_port it holds now}`` (0 for a pid holding none)."""
    inodes = set(_inodes_by_local_port(server_port).values())
    return {pid: len(inodes & _socket_inodes(pid)) for pid in pids}


def one_on_each_worker(gateway: GatewayProcess, each: int = 1) -> list[HTTPConnection]:
    """Keep-alive connections to ``gateway``, at least ``each`` of them held by every worker
    (as its log names them)."""
    host, port = gateway.host_port
    workers = list(worker_pids(gateway.logs).values())
    kept: dict[int, list[HTTPConnection]] = {pid: [] for pid in workers}
    for _ in range(200):
        conn = HTTPConnection(host, port, timeout=120)
        conn.connect()
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        pid = holders(port, [client_port], workers).get(client_port)
        assert pid is not None, "a connection no worker holds"
        if len(kept[pid]) < each:
            kept[pid].append(conn)
        else:
            conn.close()
        if all(len(conns) >= each for conns in kept.values()):
            return [c for conns in kept.values() for c in conns]
    raise AssertionError(f"200 connections did not reach every worker: {kept}")


def chat(
    conn: HTTPConnection, key: str, model: str = "test-model", max_tokens: int | None = None
) -> int:
    """The status of one chat request on ``conn`` (the body is read and dropped)."""
    request: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body=orjson.dumps(request), headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status
