"""Non-streaming load with wrk: a Lua script POSTs a small chat body, and reports in one line.

The API key reaches the script through the environment, so it is never written to disk.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CHAT_BODY",
    "WrkResult",
    "have_wrk",
    "parse_result",
    "run_wrk",
    "write_script",
    "wrk_command",
]

CHAT_BODY = (
    '{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
)

_SCRIPT = """-- Written by bench/wrk.py: POST a small chat completion, report one parseable line.
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause then
  function delay()
    return pause
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%%d duration_us=%%d connect=%%d read=%%d write=%%d status=%%d " ..
    "timeout=%%d mean_us=%%.1f p50_us=%%d p90_us=%%d p99_us=%%d p999_us=%%d max_us=%%d\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""

_RESULT = re.compile(r"BENCH_RESULT (.*)")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors_socket: int
    errors_status: int
    mean_us: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.errors_socket + self.errors_status


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def write_script(directory: Path) -> Path:
    path = directory / "post.lua"
    path.write_text(_SCRIPT % {"body": CHAT_BODY})
    return path


def parse_result(output: str) -> WrkResult:
    """The figures from wrk's output (the line our Lua ``done`` prints)."""
    found = _RESULT.search(output)
    if found is None:
        raise RuntimeError(f"wrk printed no result line:\n{output[-2000:]}")
    values = dict(item.split("=", 1) for item in found.group(1).split())
    number = {k: float(v) for k, v in values.items()}
    socket_errors = number["connect"] + number["read"] + number["write"] + number["timeout"]
    return WrkResult(
        requests=int(number["requests"]),
        duration_s=number["duration_us"] / 1e6,
        errors_socket=int(socket_errors),
        errors_status=int(number["status"]),
        mean_us=number["mean_us"],
        p50_us=number["p50_us"],
        p90_us=number["p90_us"],
        p99_us=number["p99_us"],
        p999_us=number["p999_us"],
        max_us=number["max_us"],
    )


def wrk_command(
    script: Path,
    url: str,
    connections: int,
    seconds: float,
    auth: str | None,
    prefix: list[str],
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one wrk run (one thread, whole seconds)."""
    env = dict(os.environ)
    env["BENCH_AUTH"] = auth or ""
    env.pop("BENCH_DELAY_MS", None)
    argv = [
        *prefix,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{_whole(seconds)}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    return argv, env


def _whole(seconds: float) -> int:
    return max(1, round(seconds))


def run_wrk(
    script: Path,
    url: str,
    connections: int,
    seconds: float,
    auth: str | None,
    prefix: list[str],
) -> WrkResult:
    """Run wrk once and return its figures; bounded by ``seconds`` plus slack."""
    argv, env = wrk_command(script, url, connections, seconds, auth, prefix)
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=_whole(seconds) + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_result(done.stdout)
