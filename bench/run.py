"""Run the benchmark: direct, nginx, Bastion and LiteLLM side by side, then print the table.
(``floor`` and ``floor-raw``, the Python floors of ``bench/floor.py``, run when ``--only``
names them.)

    python -m bench.run [--smoke] [--only direct,nginx,bastion,litellm] [--duration S]
                        [--out bench/results] [--preset apikey | --bastion-config FILE]
                        [--workers N] [--gateway-cores K]

The gateway under test runs on one core (``--gateway-cores K``: K cores, for Bastion with
``--workers``); the load generator, this harness's own clients and the fake upstream share
core 0. For each scenario a fresh upstream is started with that
scenario's pacing, and each system is started, measured and stopped in turn, so every figure
starts from a fresh process. Results go to ``<out>/latest.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report, wrk
from bench.procs import (
    CpuLayout,
    Proc,
    ProcError,
    core_busy_seconds,
    port_is_free,
    tree_cpu_seconds,
    wait_for_quiet,
    wait_until_ready,
)
from bench.scenarios import SCENARIOS, SMOKE, Context, Params, Scenario
from bench.systems import (
    BENCH_DIR,
    UPSTREAM_PORT,
    BastionOptions,
    BastionSystem,
    System,
    check_preset,
    make_systems,
)

__all__ = ["main"]

_SYSTEMS = ["direct", "nginx", "floor", "floor-raw", "bastion", "litellm"]
_QUIET_PCT = 10.0


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _names(text: str, allowed: list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what}: choose from {','.join(allowed)}")
    return names


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="a short run for CI (about a minute)")
    add("--only", help="systems to run, comma-separated (default: all; --smoke skips litellm)")
    add("--scenarios", help="nonstream,stream,hold,stability (default: all)")
    add("--duration", type=float, help="seconds of the steady memory run (default 60; smoke 5)")
    add("--out", type=Path, default=BENCH_DIR / "results", help="where results are written")
    add("--preset", default="apikey", help="Bastion config preset (see bench/presets.py)")
    add("--bastion-config", type=Path, help="run Bastion with this config file instead")
    add("--bastion-key", help="API key for --bastion-config (or env BENCH_BASTION_KEY)")
    add("--load-seconds", type=float, help="seconds of the 64-connection wrk run (default 10)")
    add("--latency-seconds", type=float, help="seconds of the 1-connection run (default 10)")
    add("--streams", type=int, help="concurrent streams (default 1000)")
    add("--stream-seconds", type=float, help="seconds of the streaming run (default 20)")
    add("--stream-gap-ms", type=float, help="upstream gap between events (default 50)")
    add("--stream-events", type=int, help="content events per stream (default 32)")
    add("--hold-streams", type=int, help="streams to hold open (default 10000)")
    add("--hold-seconds", type=float, help="how long they are held (default 5)")
    add("--workers", type=int, default=1, help="Bastion's server.workers (default 1)")
    add(
        "--gateway-cores",
        type=int,
        default=1,
        metavar="K",
        help="cores the gateway under test is pinned to (default 1; the load keeps core 0)",
    )
    add(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="on a shared machine: before each measurement wait up to S seconds for both "
        f"cores to be under {_QUIET_PCT:g}%% busy (default 0: do not wait)",
    )
    args = parser.parse_args(argv)
    try:
        default_systems = "direct,nginx,bastion" if args.smoke else "direct,nginx,bastion,litellm"
        args.systems = _names(args.only or default_systems, _SYSTEMS, "--only")
        scenario_names = [s.name for s in SCENARIOS]
        args.scenario_names = _names(
            args.scenarios or ",".join(scenario_names), scenario_names, "--scenarios"
        )
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    return args


_OVERRIDES = {
    "duration": "stability_s",
    "load_seconds": "load_s",
    "latency_seconds": "latency_s",
    "streams": "streams",
    "stream_seconds": "stream_s",
    "stream_gap_ms": "stream_gap_ms",
    "stream_events": "stream_events",
    "hold_streams": "hold_streams",
    "hold_seconds": "hold_s",
}


def _params(args: argparse.Namespace) -> Params:
    base = SMOKE if args.smoke else Params()
    given = {opt: getattr(args, opt) for opt in _OVERRIDES if getattr(args, opt) is not None}
    bad = ["--" + opt.replace("_", "-") for opt, value in given.items() if value <= 0]
    if bad:
        raise SystemExit(f"bench: must be positive: {', '.join(bad)}")
    return dataclasses.replace(base, **{_OVERRIDES[opt]: value for opt, value in given.items()})


def _raise_nofile(want: int) -> int:
    """Raise this process's descriptor limit (children inherit it); the limit we ended with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def _machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = platform.python_version()
    return f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {python}"


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    # SIGTERM, and SIGINT even where a shell started us with it ignored: unwind through the
    # ``finally`` blocks that stop every process we started.
    raise KeyboardInterrupt


@contextlib.contextmanager
def _running(proc: Proc | None) -> Iterator[Proc | None]:
    try:
        yield proc
    finally:
        if proc is not None:
            proc.stop()


def _start_upstream(scenario: Scenario, ctx: Context) -> Proc:
    argv = [sys.executable, "-m", "bench.fake_upstream", "--port", str(UPSTREAM_PORT)]
    argv += scenario.upstream_args(ctx.params)
    layout = ctx.layout
    proc = Proc(
        f"upstream-{scenario.name}",
        layout.prefix(layout.load) + argv,
        ctx.workdir,
        nofile=ctx.nofile,
        cwd=BENCH_DIR.parent,
    )
    try:
        wait_until_ready(proc, UPSTREAM_PORT, "/health", {}, 20.0)
    except BaseException:
        proc.stop()
        raise
    return proc


class _Noise:
    """How busy other processes kept the gateway's core while a scenario ran."""

    def __init__(self, core: int | None, gateway: Proc | None) -> None:
        self._core = core
        self._gateway = gateway
        self._start = time.monotonic()
        self._busy = core_busy_seconds(core)
        self._own = self._own_cpu()

    def _own_cpu(self) -> float:
        return 0.0 if self._gateway is None else tree_cpu_seconds(self._gateway.pid)

    def percent(self) -> float | None:
        elapsed = time.monotonic() - self._start
        if self._core is None or elapsed <= 0:
            return None
        busy = core_busy_seconds(self._core) - self._busy
        own = self._own_cpu() - self._own
        return max(0.0, busy - own) / elapsed * 100


def _measure(system: System, scenario: Scenario, ctx: Context) -> dict[str, Any]:
    """Start ``system``, run ``scenario`` against it, stop it; figures or an error."""
    try:
        gateway = system.launch(ctx.workdir, ctx.layout, ctx.nofile)
    except ProcError as exc:
        system.unavailable = f"could not start: {exc}"
        return {"error": str(exc)}
    with _running(gateway):
        if gateway is not None:
            try:
                ready = wait_until_ready(
                    gateway, system.port, system.health_path, {}, system.ready_timeout_s
                )
            except ProcError as exc:
                system.unavailable = f"did not become ready: {exc}"
                return {"error": str(exc)}
        noise = _Noise(ctx.layout.gateway, gateway)
        try:
            figures = scenario.run(system, gateway, ctx)
        except (ProcError, RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        figures["other_load_pct"] = noise.percent()
        if gateway is not None:
            figures["ready_s"] = ready
            if figures.get("errors"):
                figures["log_tail"] = gateway.log_tail(800)
        return figures


def _run_scenario(
    scenario: Scenario, runnable: list[System], ctx: Context, found: dict[str, dict[str, Any]]
) -> None:
    with _running(_start_upstream(scenario, ctx)) as upstream:
        for index, system in enumerate(runnable):
            _log(f"  {system.name} ...")
            if ctx.quiet_wait_s > 0 and ctx.layout.gateway is not None:
                busy = wait_for_quiet([ctx.layout.gateway], _QUIET_PCT, ctx.quiet_wait_s)
                _log(f"  gateway core {busy:.0f}% busy before start")
            figures = _measure(system, scenario, ctx)
            found[system.name][scenario.name] = figures
            _log(f"  {system.name}: {_brief(figures)}")
            if upstream is not None and not upstream.alive():
                problem = f"the fake upstream died:\n{upstream.log_tail()}"
                for rest in runnable[index + 1 :]:
                    found[rest.name][scenario.name] = {"error": problem}
                raise ProcError(problem)


def _run_all(systems: list[System], scenarios: list[Scenario], ctx: Context) -> dict[str, Any]:
    found: dict[str, dict[str, Any]] = {s.name: {} for s in systems}
    for scenario in scenarios:
        runnable = [s for s in systems if not s.unavailable]
        runnable = [s for s in runnable if s.is_gateway or not scenario.needs_gateway]
        if not runnable:
            continue
        _log(f"scenario {scenario.name}: {scenario.title}")
        try:
            _run_scenario(scenario, runnable, ctx, found)
        except ProcError as exc:
            _log(f"scenario {scenario.name} stopped: {str(exc).splitlines()[0]}")
            for system in runnable:
                found[system.name].setdefault(scenario.name, {"error": str(exc)})
    return found


def _brief(figures: dict[str, Any]) -> str:
    if "error" in figures:
        return "error: " + str(figures["error"]).splitlines()[0][:200]
    keys = ["rps", "cpu_us_per_request", "c1_p50_ms", "cpu_us_per_event", "ttft_p99_ms"]
    keys += ["gap_max_ms", "held", "kib_per_stream", "drift_pct", "errors"]
    return ", ".join(
        f"{k}={figures[k]:.4g}" for k in keys if isinstance(figures.get(k), int | float)
    )


def _params_text(p: Params) -> str:
    return (
        f"wrk {p.connections} conns x {p.load_s:g} s (after {p.warmup_s:g} s warm-up), "
        f"1 conn x {p.latency_s:g} s; {p.streams} streams x {p.stream_events} events, "
        f"upstream TTFT {p.stream_ttft_ms:g} ms, gap {p.stream_gap_ms:g} ms, for {p.stream_s:g} s; "
        f"hold {p.hold_streams:,} streams for {p.hold_s:g} s; steady run {p.stability_s:g} s at "
        f"~{p.stability_rps:g} req/s + {p.stability_streams} streams"
    )


def _meta(
    args: argparse.Namespace, params: Params, layout: CpuLayout, nofile: int
) -> dict[str, Any]:
    if layout.pinned:
        cores = ",".join(str(c) for c in layout.gateway_cores or (layout.gateway,))
        where = (
            f"Gateway pinned to core(s) {cores}; load, clients and upstream on core {layout.load}"
        )
        if args.gateway_cores > len(layout.gateway_cores):
            where += f" (asked for {args.gateway_cores} gateway cores: not that many here)"
        if args.workers > 1:
            where += f"; Bastion with {args.workers} workers"
    else:
        where = "Fewer than 2 CPUs: nothing pinned, figures are not comparable"
    return {
        "started": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": _machine(),
        "layout": where,
        "mode": "smoke" if args.smoke else "full",
        "nofile": nofile,
        "params": dataclasses.asdict(params),
        "params_text": _params_text(params),
    }


def _write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    markdown = report.render_markdown(results)
    (out / "latest.md").write_text(markdown)
    report.write_json(results, out / "latest.json")
    try:
        report.write_png(results, out / "latest.png")
    except ImportError as exc:
        _log(f"no chart: {exc} (pip install matplotlib)")
    print(markdown)
    _log(f"wrote {out / 'latest.md'}, latest.json, latest.png")


def _check_ports(systems: list[System]) -> None:
    taken = [p for p in {UPSTREAM_PORT, *(s.port for s in systems)} if not port_is_free(p)]
    if taken:
        raise SystemExit(f"bench: ports already in use on 127.0.0.1: {sorted(taken)}")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not wrk.have_wrk():
        raise SystemExit("bench: wrk is not installed (apt-get install -y wrk)")
    if "bastion" in args.systems and args.bastion_config is None:
        problem = check_preset(args.preset)
        if problem:
            raise SystemExit(f"bench: {problem}")
    params = _params(args)
    if args.workers < 1 or args.gateway_cores < 1:
        raise SystemExit("bench: --workers and --gateway-cores must be at least 1")
    layout = CpuLayout.detect(args.gateway_cores)
    layout.pin_self_to_load()
    nofile = _raise_nofile(2 * params.hold_streams + 128)
    options = BastionOptions(args.preset, args.bastion_config, args.bastion_key, args.workers)
    systems = make_systems(args.systems, options)
    scenarios = [s for s in SCENARIOS if s.name in args.scenario_names]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
    try:
        for system in systems:
            system.prepare(workdir)
            if system.unavailable:
                _log(f"{system.name}: {system.unavailable}")
        _check_ports(systems)
        script = wrk.write_script(workdir)
        ctx = Context(params, layout, workdir, script, nofile, args.quiet_wait)
        found = _run_all(systems, scenarios, ctx)
    finally:
        for system in systems:
            system.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    results = {
        "meta": _meta(args, params, layout, nofile),
        "systems": {
            s.name: {
                "unavailable": s.unavailable,
                "notes": s.notes,
                "scenarios": found[s.name],
                **({"limits_backend": s.limits_backend} if isinstance(s, BastionSystem) else {}),
            }
            for s in systems
        },
    }
    if args.smoke and "litellm" not in args.systems:
        results["meta"]["skipped"] = "litellm is skipped in --smoke (add it with --only)"
    _write(results, args.out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _log("interrupted; every process started was stopped")
        sys.exit(130)
