"""Processes the benchmark starts: pinning, readiness, CPU time and memory from /proc, cleanup.

Every process is started in its own session, so that stopping it also stops whatever it
started (nginx's worker, an ASGI server's reloader); only process groups this module started
are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CpuLayout",
    "Proc",
    "ProcError",
    "core_busy_seconds",
    "http_get_status",
    "port_is_free",
    "tree_cpu_seconds",
    "tree_pids",
    "tree_rss_bytes",
    "wait_for_quiet",
    "wait_until_ready",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class ProcError(RuntimeError):
    """A process did not start, did not become ready, or died while measured."""


@dataclass(frozen=True)
class CpuLayout:
    """Which core runs the system under test, and which runs the load generator and upstream."""

    gateway: int | None
    load: int | None
    gateway_cores: tuple[int, ...] = ()
    """Every core the gateway may run on (``--gateway-cores``); ``gateway`` is the first."""

    @classmethod
    def detect(cls, gateway_cores: int = 1) -> CpuLayout:
        """Core 0 for the load; the next ``gateway_cores`` (as many as there are) for the
        system under test."""
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls(gateway=None, load=None)
        given = tuple(cores[1 : 1 + max(1, gateway_cores)])
        return cls(gateway=given[0], load=cores[0], gateway_cores=given)

    @property
    def pinned(self) -> bool:
        return self.gateway is not None

    def prefix(self, core: int | None) -> list[str]:
        return [] if core is None else ["taskset", "-c", str(core)]

    def gateway_prefix(self) -> list[str]:
        """Pins the system under test to its cores."""
        if self.gateway is None:
            return []
        return ["taskset", "-c", ",".join(str(c) for c in self.gateway_cores or (self.gateway,))]

    def pin_self_to_load(self) -> None:
        """The harness's own client runs beside the load generator, never on the gateway core."""
        if self.load is not None:
            os.sched_setaffinity(0, {self.load})


def _raise_nofile(limit: int | None) -> Callable[[], None] | None:
    if limit is None:
        return None

    def apply() -> None:  # runs in the child, between fork and exec
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))

    return apply


class Proc:
    """A started process group; ``stop`` is idempotent and always safe to call."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        nofile: int | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_raise_nofile(nofile),  # the harness starts no threads
            )
        except OSError as exc:
            self._log.close()
            raise ProcError(f"{name}: cannot start {self.argv[0]}: {exc}") from exc

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, limit: int = 2000) -> str:
        """The end of what the process printed, without terminal colour codes."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_bytes()[-limit:].decode(errors="replace")
            return _ANSI.sub("", text)
        return ""

    def check_alive(self) -> None:
        if not self.alive():
            code = self.popen.returncode
            raise ProcError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def stop(self, grace_s: float = 5.0) -> None:
        try:
            if self.alive():
                self._signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.popen.wait(timeout=grace_s)
            # Children that outlived the leader (same group, started by it) go too.
            self._signal(signal.SIGKILL)
        finally:
            self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    return children


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children = _children_map()
    found = [pid]
    index = 0
    while index < len(found) and index < 10_000:
        found.extend(children.get(found[index], []))
        index += 1
    return found


def _cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        # After the command: state is field 3, utime 14 and stime 15, cutime 16, cstime 17.
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        return ticks / _CLK_TCK
    return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid``, its live descendants and their reaped children."""
    return sum(_cpu_seconds(p) for p in tree_pids(pid))


def _rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return 0


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (shared pages counted once per process)."""
    return sum(_rss_bytes(p) for p in tree_pids(pid))


def core_busy_seconds(core: int | None) -> float:
    """Seconds core ``core`` spent not idle (all processes, interrupts and steal) since boot."""
    if core is None:
        return 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                ticks = [int(x) for x in line.split()[1:]]
                return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _CLK_TCK  # minus idle, iowait
    return 0.0


def wait_for_quiet(cores: list[int], busy_pct: float, max_wait_s: float) -> float:
    """Wait (at most ``max_wait_s``) for a second in which every core in ``cores`` was busy
    less than ``busy_pct``; the busiest core's percentage in the last second looked at."""
    deadline = time.monotonic() + max_wait_s
    worst = 0.0
    for _second in range(int(max_wait_s) + 1):
        before = [core_busy_seconds(c) for c in cores]
        time.sleep(1.0)
        worst = max((core_busy_seconds(c) - b) * 100 for c, b in zip(cores, before, strict=True))
        if worst < busy_pct or time.monotonic() >= deadline:
            break
    return worst


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def http_get_status(host: str, port: int, path: str, headers: Mapping[str, str]) -> int | None:
    """One GET on a fresh connection; the status code, or None when nothing sensible came back."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.sendall(request)
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def wait_until_ready(
    proc: Proc,
    port: int,
    path: str,
    headers: Mapping[str, str],
    timeout_s: float,
) -> float:
    """Poll ``GET path`` until 200; the seconds it took. Raises if the process dies first."""
    start = time.monotonic()
    deadline = start + timeout_s
    last: int | None = None
    while time.monotonic() < deadline:
        proc.check_alive()
        last = http_get_status("127.0.0.1", port, path, headers)
        if last == 200:
            return time.monotonic() - start
        time.sleep(0.05)
    raise ProcError(
        f"{proc.name} not ready on port {port} after {timeout_s:.0f} s "
        f"(last status {last}):\n{proc.log_tail()}"
    )
