"""Instructions per request and per streamed event: a repeatable measure for A/B comparisons.

    python -m bench.callgrind [--preset production] [--requests 2000] [--streams 20]

CPU time on a shared two-core machine swings by tens of per cent between identical runs;
the number of instructions the gateway executes for a fixed amount of work does not (about
1%). This runs ``bastion serve`` under valgrind's callgrind, sends it a fixed load after a
warm-up, and prints the gateway's instructions (user space, all its threads) per
non-streaming request and per relayed event of a stream: those of the event loop's thread,
and those of the other threads (the store's: usage writes, revision polls) apart, since
their work follows the clock as much as the load, and valgrind slows the clock's share up.
Kernel work (system calls) is not counted, and instructions are not time (cache misses,
branch mispredictions); the benchmark (``bench.run``) stays the judge, this tells whether a
change saved work.

Non-streaming: ``--requests`` POSTs of the benchmark's chat body over ``--connections``
kept-alive connections. Streaming: ``--streams`` concurrent clients, each running
``--rounds`` streams of the fake upstream's 32 events one after the other (TTFT and gap as
the benchmark's, so the gateway relays about one event per read, as it does there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httptools
import uvloop
import yaml

from bench.presets import PresetFacts, build_preset
from bench.procs import Proc, wait_until_ready
from bench.streams import Recorder, StreamConnection, Target, stream_request
from bench.systems import BENCH_DIR, generate_bastion_key
from bench.wrk import CHAT_BODY

__all__ = ["main"]

# ports of their own, so that bench.run can measure on the same machine meanwhile
BASTION_PORT = 18180
UPSTREAM_PORT = 18101
_TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.MULTILINE)


class _Client(asyncio.Protocol):
    """One kept-alive connection sending the chat body, one request at a time."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._done: asyncio.Future[int] | None = None
        self.failures: Counter[int] = Counter()
        """Answers other than 200, by status."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(self._parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError("closed"))

    async def one(self) -> None:
        assert self._transport is not None
        self._done = asyncio.get_running_loop().create_future()
        self._transport.write(self._request)
        status = await self._done
        if status != 200:
            self.failures[status] += 1


def _chat_request(auth: str) -> bytes:
    body = CHAT_BODY.encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{BASTION_PORT}\r\n"
        f"Content-Type: application/json\r\nAuthorization: {auth}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _requests(auth: str, total: int, connections: int) -> Counter[int]:
    """Send ``total`` requests over ``connections`` connections; the failures by status."""
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(
            lambda: _Client(_chat_request(auth)), "127.0.0.1", BASTION_PORT
        )
        clients.append(client)
    left = [total]

    async def run(client: _Client) -> None:
        while left[0] > 0:
            left[0] -= 1
            await client.one()

    await asyncio.gather(*(run(c) for c in clients))
    return sum((c.failures for c in clients), Counter())


async def _streams(auth: str, streams: int, rounds: int) -> Recorder:
    loop = asyncio.get_running_loop()
    recorder = Recorder(expected_events=0)  # not checked here
    request = stream_request(Target("127.0.0.1", BASTION_PORT, auth))

    async def run() -> None:
        _, conn = await loop.create_connection(
            lambda: StreamConnection(recorder), "127.0.0.1", BASTION_PORT
        )
        for _ in range(rounds):
            outcome = await asyncio.wait_for(conn.send(request), 120)
            if outcome != "ok":
                recorder.errors[outcome] += 1
        conn.close()

    await asyncio.gather(*(run() for _ in range(streams)))
    return recorder


class _Callgrind:
    """The gateway under callgrind (one profile per thread); counters zeroed and dumped on
    demand."""

    def __init__(self, proc: Proc, out: Path) -> None:
        self._proc = proc
        self._out = out
        self._dumps = 0

    def _control(self, option: str) -> None:
        subprocess.run(["callgrind_control", option, str(self._proc.pid)], check=True,
                       capture_output=True, timeout=120)  # fmt: skip

    def zero(self) -> None:
        self._control("-z")

    def dump(self) -> tuple[int, int]:
        """Dump the counters since the last zero: the instructions of the event loop's thread
        and of every other thread (the store's writer, its polls), summed."""
        self._control("-d")
        self._dumps += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = list(self._out.parent.glob(f"{self._out.name}.{self._dumps}-*"))
            totals = {path.name.rsplit("-", 1)[1]: _total(path) for path in found}
            if totals and None not in totals.values():
                main = totals.pop("01", 0) or 0
                return main, sum(t or 0 for t in totals.values())
            time.sleep(0.5)
        raise RuntimeError("callgrind wrote no dump")


def _total(path: Path) -> int | None:
    found = _TOTALS.search(path.read_bytes())
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def _started(argv: list[str], workdir: Path, name: str) -> Iterator[Proc]:
    proc = Proc(name, argv, workdir, cwd=BENCH_DIR.parent)
    try:
        yield proc
    finally:
        proc.stop()


def _measure(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    key, key_hash = generate_bastion_key()
    facts = PresetFacts(BASTION_PORT, f"http://127.0.0.1:{UPSTREAM_PORT}", workdir, key, key_hash)
    preset = build_preset(args.preset, facts)
    config = workdir / "bastion.yaml"
    config.write_text(yaml.safe_dump(preset.config, sort_keys=False))
    upstream = [sys.executable, "-m", "bench.fake_upstream", "--port", str(UPSTREAM_PORT)]
    upstream += ["--ttft-ms", "20", "--gap-ms", "50", "--events", str(args.events)]
    out = workdir / "cg.out"
    gateway = ["valgrind", "--tool=callgrind", "--separate-threads=yes"]
    gateway += [f"--callgrind-out-file={out}"]
    script = Path(sys.executable).parent / "bastion"
    gateway += [str(script), "serve", "--config", str(config)]
    figures: dict[str, float] = {}
    with (
        _started(upstream, workdir, "upstream") as up,
        _started(gateway, workdir, "bastion") as proc,
    ):
        wait_until_ready(up, UPSTREAM_PORT, "/health", {}, 30.0)
        wait_until_ready(proc, BASTION_PORT, "/health", {}, 300.0)
        grind = _Callgrind(proc, out)
        run = uvloop.run
        run(_requests(preset.authorization, args.warmup, args.connections))
        grind.zero()
        failures = run(_requests(preset.authorization, args.requests, args.connections))
        loop, others = grind.dump()
        figures["loop_instructions_per_request"] = loop / args.requests
        figures["other_threads_instructions_per_request"] = others / args.requests
        figures["request_failures"] = sum(failures.values())
        if failures:
            print(f"request failures by status: {dict(failures)}", file=sys.stderr)
        if args.streams:
            grind.zero()
            recorder = run(_streams(preset.authorization, args.streams, args.rounds))
            loop, others = grind.dump()
            events = max(1, recorder.events)
            figures["loop_instructions_per_event"] = loop / events
            figures["other_threads_instructions_per_event"] = others / events
            figures["events"] = recorder.events
            figures["stream_failures"] = sum(recorder.errors.values())
            if recorder.errors:
                print(f"stream failures: {dict(recorder.errors)}", file=sys.stderr)
        if figures.get("request_failures") or figures.get("stream_failures"):
            print(f"the gateway's log ends:\n{proc.log_tail(3000)}", file=sys.stderr)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__)
    add = parser.add_argument
    add("--preset", default="production", help="Bastion preset (bench/presets.py)")
    add("--requests", type=int, default=2000, help="non-streaming requests measured")
    add("--warmup", type=int, default=500, help="requests sent before measuring")
    add("--connections", type=int, default=16, help="connections they are sent over")
    add("--streams", type=int, default=20, help="concurrent streams (0: none)")
    add("--rounds", type=int, default=3, help="streams each client runs in turn")
    add("--events", type=int, default=32, help="content events per stream")
    add("--keep", type=Path, help="copy callgrind's dumps here (for callgrind_annotate)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench.callgrind: valgrind is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="bastion-callgrind-"))
    try:
        figures = _measure(args, workdir)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for dump in workdir.glob("cg.out*"):
                shutil.copy(dump, args.keep / dump.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, value in figures.items():
        print(f"{name} {value:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
