"""Bastion in front of the real embedded engine (llama.cpp + Gemma 3 270M), against the engine.

``python -m bench.embedded [--requests N] [--max-tokens T]``

The engine is started once (by Bastion's own :class:`ManagedEngine`); Bastion is started in
front of it with a config naming it as the upstream. Requests then alternate, one to the
engine directly, one through Bastion, so both series see the same engine and machine state.
Reported per path: latency of non-streaming completions, time to first token and tokens per
second of streamed ones, and what Bastion adds (paired medians). Nothing is pinned: this is
about what a user of the embedded default sees, not about the gateway's own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from bastion.auth.apikeys import generate_key, hash_key
from bastion.settings import EngineSettings
from bastion.upstream.engine import ManagedEngine

MODEL = "gemma-3-270m"
PROMPT = "The three primary colours are"


def _post(port: int, key: str, body: dict[str, object]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    return conn.getresponse()


def completion(port: int, key: str, max_tokens: int) -> float:
    """Seconds for one non-streaming completion."""
    began = time.perf_counter()
    response = _post(port, key, {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens})
    data = json.loads(response.read())
    if response.status != 200 or not data["choices"]:
        raise RuntimeError(f"completion failed: {response.status} {data}")
    return time.perf_counter() - began


def streamed(port: int, key: str, max_tokens: int) -> tuple[float, float]:
    """(time to first token, tokens per second after it) for one streamed completion."""
    began = time.perf_counter()
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True}
    response = _post(port, key, body)
    if response.status != 200:
        raise RuntimeError(f"stream failed: {response.status} {response.read()!r}")
    first = None
    tokens = 0
    for line in response:
        if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
            tokens += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("the stream carried no token")
    rate = (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0
    return first - began, rate


@contextmanager
def bastion_in_front(engine: ManagedEngine, workdir: Path) -> Iterator[tuple[int, str]]:
    key = generate_key()
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "state_dir": str(workdir / "state")},
        "models": [
            {
                "name": MODEL,
                "upstreams": [
                    {
                        "url": engine.base_url,
                        "api_key": {"env": "BENCH_ENGINE_KEY"},
                        "send_request_id": False,
                    }
                ],
            }
        ],
        "auth": {"api_keys": [{"name": "bench", "hash": hash_key(key)}]},
    }
    path = workdir / "bastion.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (workdir / "bastion.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bastion", "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "BENCH_ENGINE_KEY": engine.api_key},
    )
    try:
        port = _wait_listening(workdir / "bastion.log", proc)
        yield port, key
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def _wait_listening(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "Bastion listening on http://" in line:
                return int(line.rsplit(":", 1)[1].split()[0])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"bastion did not start:\n{log.read_text()[-2000:]}")


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f}"


Series = dict[str, list[float]]


def _measure(
    direct: tuple[int, str], gateway: tuple[int, str], requests: int, max_tokens: int
) -> tuple[Series, Series, Series]:
    completion(*direct, max_tokens)  # warm both paths up
    completion(*gateway, max_tokens)
    lat: Series = {"direct": [], "bastion": []}
    ttft: Series = {"direct": [], "bastion": []}
    rate: Series = {"direct": [], "bastion": []}
    for _ in range(requests):
        for name, (port, key) in (("direct", direct), ("bastion", gateway)):
            lat[name].append(completion(port, key, max_tokens))
            first, per_s = streamed(port, key, max_tokens)
            ttft[name].append(first)
            rate[name].append(per_s)
    return lat, ttft, rate


async def _run(requests: int, max_tokens: int) -> tuple[Series, Series, Series]:
    with tempfile.TemporaryDirectory(prefix="bastion-embedded-") as tmp:
        workdir = Path(tmp)
        engine = ManagedEngine(EngineSettings(), workdir)
        await engine.start()  # supervised, its output drained, while the requests run
        try:
            direct = (int(engine.base_url.rsplit(":", 1)[1]), engine.api_key)
            with bastion_in_front(engine, workdir) as gateway:
                return await asyncio.to_thread(_measure, direct, gateway, requests, max_tokens)
        finally:
            await engine.stop()


def run(requests: int, max_tokens: int) -> str:
    """Run the comparison and return it as a Markdown table."""
    lat, ttft, rate = asyncio.run(_run(requests, max_tokens))
    added = [b - d for b, d in zip(lat["bastion"], lat["direct"], strict=True)]
    added_ttft = [b - d for b, d in zip(ttft["bastion"], ttft["direct"], strict=True)]
    return "\n".join(
        [
            f"Embedded engine (llama.cpp, {MODEL}), {requests} paired requests, "
            f"max_tokens={max_tokens}, medians:",
            "",
            "| | direct | bastion | added by Bastion |",
            "|---|---|---|---|",
            f"| completion latency (ms) | {_ms(lat['direct'])} | {_ms(lat['bastion'])} "
            f"| {_ms(added)} |",
            f"| stream: time to first token (ms) | {_ms(ttft['direct'])} | {_ms(ttft['bastion'])} "
            f"| {_ms(added_ttft)} |",
            f"| stream: tokens/s | {statistics.median(rate['direct']):.1f} "
            f"| {statistics.median(rate['bastion']):.1f} | |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    print(run(args.requests, args.max_tokens))


if __name__ == "__main__":
    main()
