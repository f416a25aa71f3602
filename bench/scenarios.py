"""The four scenarios: non-streaming load, concurrent streams, many held streams, long steady run.

Each scenario names the upstream pacing it needs and returns plain figures (a dict of numbers
and short strings) for one system. The gateway's cost is read from /proc around the load:
CPU seconds of its process tree and its resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench import wrk
from bench.latency import LatencyTarget, paired_latency
from bench.procs import CpuLayout, Proc, tree_cpu_seconds, tree_rss_bytes
from bench.streams import HoldResult, Recorder, Target, hold_streams, percentile, run_streams
from bench.systems import UPSTREAM_PORT, System

__all__ = ["SCENARIOS", "Context", "Params", "Scenario", "hold_size"]

MiB = 1024 * 1024
Figures = dict[str, Any]
_FD_RESERVE = 64  # listening sockets, epoll, log files, pipes: what a process holds besides streams


@dataclass(frozen=True)
class Params:
    """Sizes and durations of one run (``--smoke`` picks small ones)."""

    warmup_s: float = 2.0
    load_s: float = 10.0
    latency_s: float = 10.0
    connections: int = 64
    streams: int = 1000
    stream_s: float = 20.0
    stream_ttft_ms: float = 20.0
    stream_gap_ms: float = 50.0
    stream_events: int = 32
    hold_streams: int = 10_000
    hold_rate: float = 2000.0
    hold_s: float = 5.0
    hold_gap_ms: float = 5000.0
    stability_s: float = 60.0
    stability_rps: float = 1000.0
    stability_streams: int = 20


SMOKE = Params(
    warmup_s=1.0,
    load_s=2.0,
    latency_s=2.0,
    streams=50,
    stream_s=3.0,
    stream_gap_ms=20.0,
    stream_events=8,
    hold_streams=200,
    hold_rate=1000.0,
    hold_s=1.0,
    stability_s=5.0,
    stability_rps=200.0,
    stability_streams=5,
)


@dataclass(frozen=True)
class Context:
    params: Params
    layout: CpuLayout
    workdir: Path
    wrk_script: Path
    nofile: int
    quiet_wait_s: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    upstream_args: Callable[[Params], list[str]]
    run: Callable[[System, Proc | None, Context], Figures]
    needs_gateway: bool = False


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _cpu(proc: Proc | None) -> float:
    return tree_cpu_seconds(proc.pid) if proc is not None else 0.0


def _alive(proc: Proc | None) -> None:
    if proc is not None:
        proc.check_alive()


def _url(system: System) -> str:
    return f"http://127.0.0.1:{system.port}/v1/chat/completions"


# -- non-streaming -----------------------------------------------------------------------------


def _nonstream(system: System, proc: Proc | None, ctx: Context) -> Figures:
    p, layout = ctx.params, ctx.layout
    load = layout.prefix(layout.load)
    out: Figures = {}
    if proc is not None:
        out["rss_idle_mib"] = tree_rss_bytes(proc.pid) / MiB
    wrk.run_wrk(ctx.wrk_script, _url(system), p.connections, p.warmup_s, system.auth, load)
    _alive(proc)
    cpu = _cpu(proc)
    r = wrk.run_wrk(ctx.wrk_script, _url(system), p.connections, p.load_s, system.auth, load)
    cpu = _cpu(proc) - cpu
    _alive(proc)
    out.update(rps=r.rps, requests=r.requests, errors=r.errors, c64_p99_ms=r.p99_us / 1000)
    if proc is not None and r.requests:
        out["cpu_us_per_request"] = cpu / r.requests * 1e6
        out["cpu_busy_pct"] = cpu / r.duration_s * 100
    out.update(_one_connection(system, p.latency_s))
    _alive(proc)
    return out


def _percentiles(prefix: str, samples: list[float]) -> Figures:
    pcts = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
    out: Figures = {f"{prefix}_{name}_ms": _ms(percentile(samples, q)) for name, q in pcts.items()}
    out[f"{prefix}_mean_ms"] = _ms(sum(samples) / len(samples)) if samples else None
    return out


def _one_connection(system: System, seconds: float) -> Figures:
    """Latency at concurrency 1; a gateway is measured turn about with the upstream itself."""
    direct = LatencyTarget(UPSTREAM_PORT, system.auth)
    if not system.is_gateway:
        [(samples, errors)] = paired_latency([direct], seconds)
        return {"c1_requests": len(samples), "c1_errors": errors, **_percentiles("c1", samples)}
    gateway = LatencyTarget(system.port, system.auth)
    [(base, _), (samples, errors)] = paired_latency([direct, gateway], seconds)
    out: Figures = {"c1_requests": len(samples), "c1_errors": errors}
    out.update(_percentiles("c1", samples))
    out.update(_percentiles("c1_direct", base))
    for name in ("p50", "p99"):
        mine, theirs = out[f"c1_{name}_ms"], out[f"c1_direct_{name}_ms"]
        if mine is not None and theirs is not None:
            out[f"c1_added_{name}_ms"] = mine - theirs
    return out


# -- concurrent streams ------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No cyclic garbage collection in the measuring process while it measures."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _stream(system: System, proc: Proc | None, ctx: Context) -> Figures:
    p = ctx.params
    target = Target("127.0.0.1", system.port, system.auth)
    stream_len = (p.stream_ttft_ms + (p.stream_events - 1) * p.stream_gap_ms) / 1000
    ramp = min(stream_len, p.stream_s / 2)
    expected = p.stream_events + 2  # content events, the usage chunk, [DONE]
    cpu = _cpu(proc)
    began = time.perf_counter()
    with quiet_gc():  # a collector pause in the load generator would read as a gateway stall
        rec = uvloop.run(
            run_streams(target, p.streams, p.stream_s, ramp, expected, stream_len + 30)
        )
    elapsed = time.perf_counter() - began
    cpu = _cpu(proc) - cpu
    _alive(proc)
    out: Figures = {
        "streams": p.streams,
        "streams_ok": rec.ok,
        "connections": rec.connects,
        "errors": sum(rec.errors.values()),
        "error_kinds": dict(rec.errors),
        "events": rec.events,
        "events_per_s": rec.events / elapsed,
        "upstream_gap_ms": p.stream_gap_ms,
        "upstream_ttft_ms": p.stream_ttft_ms,
        "ttft_p50_ms": _ms(percentile(rec.ttft, 50)),
        "ttft_p99_ms": _ms(percentile(rec.ttft, 99)),
        "ttft_max_ms": _ms(percentile(rec.ttft, 100)),
        "gap_p50_ms": _ms(percentile(rec.gaps, 50)),
        "gap_p99_ms": _ms(percentile(rec.gaps, 99)),
        "gap_p999_ms": _ms(percentile(rec.gaps, 99.9)),
        "gap_max_ms": _ms(percentile(rec.gaps, 100)),
    }
    if proc is not None and rec.events:
        out["cpu_us_per_event"] = cpu / rec.events * 1e6
        out["cpu_busy_pct"] = cpu / elapsed * 100
    return out


# -- many open streams -------------------------------------------------------------------------


def hold_size(requested: int, nofile: int, gateway: bool) -> tuple[int, str | None]:
    """How many streams one process can hold under ``nofile`` descriptors, and why if fewer.

    A gateway speaking HTTP/1.1 upstream holds two sockets per stream (caller and upstream).
    """
    per_stream = 2 if gateway else 1
    fits = (nofile - _FD_RESERVE) // per_stream
    if fits >= requested:
        return requested, None
    why = (
        f"{requested:,} streams need {requested * per_stream + _FD_RESERVE:,} file descriptors "
        f"in one process ({per_stream} sockets per stream + {_FD_RESERVE} spare); the hard "
        f"RLIMIT_NOFILE here is {nofile:,} and cannot be raised (no CAP_SYS_RESOURCE), "
        f"so {fits:,} were held"
    )
    return fits, why


def _hold(system: System, proc: Proc | None, ctx: Context) -> Figures:
    p = ctx.params
    count, why = hold_size(p.hold_streams, ctx.nofile, system.is_gateway)
    target = Target("127.0.0.1", system.port, system.auth)
    before = tree_rss_bytes(proc.pid) if proc is not None else 0
    samples: list[int] = []

    def sample(_result: HoldResult) -> None:
        if proc is not None:
            samples.append(tree_rss_bytes(proc.pid))

    result = uvloop.run(
        hold_streams(target, count, p.hold_rate, p.hold_s, 30.0 + count / p.hold_rate, sample)
    )
    _alive(proc)
    out: Figures = {
        "requested": p.hold_streams,
        "attempted": count,
        "held": result.opened - result.lost_while_held,
        "failed_to_open": result.failed_to_open,
        "lost_while_held": result.lost_while_held,
        "errors": result.failed_to_open + result.lost_while_held,
        "error_kinds": dict(result.errors),
        "open_seconds": result.open_seconds,
    }
    if why:
        out["limit"] = why
    if proc is not None and samples and result.opened:
        during = max(samples)
        out["rss_before_mib"] = before / MiB
        out["rss_open_mib"] = during / MiB
        out["kib_per_stream"] = (during - before) / result.opened / 1024
    return out


# -- steady run --------------------------------------------------------------------------------


async def _sample_rss(pid: int, seconds: float, into: list[float]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for tick in range(int(seconds) + 1):
        into.append(tree_rss_bytes(pid) / MiB)
        await asyncio.sleep(max(0.0, start + tick + 1 - loop.time()))


async def _steady(target: Target, pid: int, p: Params, into: list[float]) -> Recorder:
    expected = p.stream_events + 2
    stream_len = (p.stream_ttft_ms + (p.stream_events - 1) * p.stream_gap_ms) / 1000
    streams = run_streams(
        target, p.stability_streams, p.stability_s, stream_len, expected, stream_len + 30
    )
    rec, _ = await asyncio.gather(streams, _sample_rss(pid, p.stability_s, into))
    return rec


def _drift(samples: list[float], seconds: float) -> Figures:
    warm = min(max(2, round(seconds * 0.1)), max(0, len(samples) - 2))
    ref = samples[warm]
    later = samples[warm:]
    worst = max(later, key=lambda s: abs(s - ref))
    return {
        "rss_start_mib": samples[0],
        "rss_ref_mib": ref,
        "rss_end_mib": samples[-1],
        "rss_max_mib": max(samples),
        "warmup_s": warm,
        "drift_pct": (worst - ref) / ref * 100,
        "end_drift_pct": (samples[-1] - ref) / ref * 100,
    }


def _stability(system: System, proc: Proc | None, ctx: Context) -> Figures:
    if proc is None:
        return {"skipped": "no gateway process to watch"}
    p, layout = ctx.params, ctx.layout
    conns = 8
    delay_ms = conns * 1000 / p.stability_rps
    argv, env = wrk.wrk_command(
        ctx.wrk_script, _url(system), conns, p.stability_s, system.auth, layout.prefix(layout.load)
    )
    env["BENCH_DELAY_MS"] = f"{delay_ms:g}"
    samples: list[float] = []
    target = Target("127.0.0.1", system.port, system.auth)
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as load:
        try:
            rec = uvloop.run(_steady(target, proc.pid, p, samples))
            stdout, stderr = load.communicate(timeout=p.stability_s + 60)
        finally:
            if load.poll() is None:
                load.kill()
    _alive(proc)
    r = wrk.parse_result(stdout.decode(errors="replace") + stderr.decode(errors="replace"))
    out: Figures = {
        "seconds": p.stability_s,
        "rps": r.rps,
        "requests": r.requests,
        "streams_ok": rec.ok,
        "errors": r.errors + sum(rec.errors.values()),
    }
    out.update(_drift(samples, p.stability_s))
    out["samples_mib"] = [round(s, 2) for s in samples]
    return out


# -- the list ----------------------------------------------------------------------------------


def _fast(_p: Params) -> list[str]:
    return []


def _paced(p: Params) -> list[str]:
    return [
        f"--ttft-ms={p.stream_ttft_ms:g}",
        f"--gap-ms={p.stream_gap_ms:g}",
        f"--events={p.stream_events}",
    ]


def _holding(p: Params) -> list[str]:
    # Long gaps and more events than the hold lasts: the streams stay open until we close them.
    return ["--ttft-ms=5", f"--gap-ms={p.hold_gap_ms:g}", "--events=1000"]


SCENARIOS: list[Scenario] = [
    Scenario("nonstream", "non-streaming chat", _fast, _nonstream),
    Scenario("stream", "concurrent streams", _paced, _stream),
    Scenario("hold", "many open streams", _holding, _hold),
    Scenario("stability", "steady run (memory)", _paced, _stability, needs_gateway=True),
]
