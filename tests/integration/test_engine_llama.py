"""The managed engine, for real: llama.cpp's server with the bundled Gemma 3 270M.

No mocks. One engine serves the module (model load takes a few seconds); the tests run in file
order and the restart test comes last of those that share it. llama-cpp-python is a declared
dependency, so its absence fails these tests rather than skipping them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bastion.settings import EngineSettings
from bastion.upstream.engine import EngineStartError, ManagedEngine

pytestmark = pytest.mark.asyncio(loop_scope="module")

READY_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(state_dir: Path) -> AsyncIterator[ManagedEngine]:
    settings = EngineSettings(ready_timeout=READY_TIMEOUT, restart_backoff_max=2.0)
    managed = ManagedEngine(settings, state_dir)
    began = time.monotonic()
    await managed.start()
    print(f"engine ready after {time.monotonic() - began:.1f} s")
    yield managed
    await managed.stop()


async def http(
    engine: ManagedEngine,
    method: str,
    path: str,
    *,
    key: str | None,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One raw HTTP/1.1 request to the engine; returns the status and the JSON body."""
    host, port = engine.base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    if key is not None:
        head.append(f"Authorization: Bearer {key}")
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
        await writer.wait_closed()
    header_block, _, content = response.partition(b"\r\n\r\n")
    status = int(header_block.split(b" ", 2)[1])
    return status, json.loads(content)


async def test_llama_cpp_server_is_installed() -> None:
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import llama_cpp.server", stderr=asyncio.subprocess.PIPE
    )
    _, error = await check.communicate()
    assert check.returncode == 0, error.decode()


async def test_models_answer_with_the_key(engine: ManagedEngine) -> None:
    assert engine.base_url.startswith("http://127.0.0.1:")
    status, body = await http(engine, "GET", "/v1/models", key=engine.api_key)
    assert status == 200
    assert [model["id"] for model in body["data"]] == [engine.served_name]


@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_requests_without_the_key_are_refused(engine: ManagedEngine, key: str | None) -> None:
    status, _ = await http(engine, "GET", "/v1/models", key=key)
    assert status == 401
    completion = {"model": engine.served_name, "prompt": "Hi", "max_tokens": 1}
    status, _ = await http(engine, "POST", "/v1/completions", key=key, body=completion)
    assert status == 401


async def test_short_completion(engine: ManagedEngine) -> None:
    request = {
        "model": engine.served_name,
        "prompt": "The capital of France is",
        "max_tokens": 5,
        "temperature": 0,
    }
    status, body = await http(engine, "POST", "/v1/completions", key=engine.api_key, body=request)
    assert status == 200
    text = body["choices"][0]["text"]
    assert isinstance(text, str)
    assert text.strip()
    assert 1 <= body["usage"]["completion_tokens"] <= 5


async def test_short_chat_answers_with_text(engine: ManagedEngine) -> None:
    # The bundled GGUF has no chat template: without the gemma format the answer is empty.
    request = {
        "model": engine.served_name,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 5,
        "temperature": 0,
    }
    status, body = await http(
        engine, "POST", "/v1/chat/completions", key=engine.api_key, body=request
    )
    assert status == 200
    assert body["choices"][0]["message"]["content"].strip()


async def test_killed_engine_is_restarted(
    engine: ManagedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    old_pid = engine.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if engine.restarts == 1 and engine.pid not in (None, old_pid):
            try:
                status, _ = await http(engine, "GET", "/v1/models", key=engine.api_key)
            except OSError:
                status = 0
            if status == 200:
                break
        assert time.monotonic() < deadline, "the engine did not come back"
        await asyncio.sleep(0.2)
    assert engine.is_running()
    assert "engine exited unexpectedly with status -9" in caplog.text


async def test_stop_leaves_no_process(state_dir: Path) -> None:
    managed = ManagedEngine(EngineSettings(ready_timeout=READY_TIMEOUT), state_dir)
    await managed.start()
    pid = managed.pid
    assert pid is not None
    await managed.stop()
    assert not managed.is_running()
    assert managed.pid is None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # neither the engine nor anything it spawned
    await managed.stop()


async def test_bad_model_fails_with_the_engine_output(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file")
    managed = ManagedEngine(EngineSettings(model=str(bad), ready_timeout=READY_TIMEOUT), tmp_path)
    with pytest.raises(EngineStartError, match="exited with status") as caught:
        await managed.start()
    assert caught.value.output
    assert not managed.is_running()
