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
from pathlib import Path

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
