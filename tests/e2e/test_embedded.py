"""One command, no config: Bastion serves the real Gemma 3 270M through llama.cpp.

The official ``openai`` client is the caller. Nothing here is faked: the engine is the
embedded llama.cpp server with the bundled model, started and supervised by the gateway.
"""

from __future__ import annotations

import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bastion.auth.apikeys import generate_key, hash_key
from tests.support.clients import openai_client
from tests.support.gateway import ADMIN_KEY, GatewayProcess
from tests.support.workers import chat, one_on_each_worker

pytestmark = pytest.mark.e2e

MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    home = tmp_path_factory.mktemp("embedded")
    process = GatewayProcess(None, Path(home), env={"XDG_STATE_HOME": str(home)}, ready_timeout=600)
    try:
        key = process.printed_admin_key()
        yield process, key
    finally:
        process.stop()
    stored = (Path(home) / "bastion" / "bastion.db").read_bytes()
    assert key.encode() not in stored  # only its digest is kept
    assert hash_key(key).removeprefix("sha256:").encode() in stored
    again = GatewayProcess(None, Path(home), env={"XDG_STATE_HOME": str(home)}, ready_timeout=600)
    again.stop()
    assert not ADMIN_KEY.search(again.logs), "the administrator key must be shown only once"


def test_chat_returns_text(embedded: tuple[GatewayProcess, str]) -> None:
    gateway, key = embedded
    reply = openai_client(gateway.url, key, timeout=120).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_completion_returns_text(embedded: tuple[GatewayProcess, str]) -> None:
    gateway, key = embedded
    reply = openai_client(gateway.url, key, timeout=120).completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8
    )
    assert reply.choices[0].text.strip()


def test_streaming_returns_text_incrementally(embedded: tuple[GatewayProcess, str]) -> None:
    gateway, key = embedded
    stream = openai_client(gateway.url, key, timeout=120).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=24,
        stream=True,
    )
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1
    assert "".join(pieces).strip()


def test_models_lists_the_embedded_model(embedded: tuple[GatewayProcess, str]) -> None:
    gateway, key = embedded
    assert [m.id for m in openai_client(gateway.url, key).models.list()] == [MODEL]


def test_wrong_or_missing_key_is_refused(embedded: tuple[GatewayProcess, str]) -> None:
    gateway, _ = embedded
    for key in (generate_key(), "not-a-key"):
        with pytest.raises(openai.AuthenticationError):
            openai_client(gateway.url, key).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2
            )
    with socket.create_connection(gateway.host_port, timeout=5) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 401 ")


def test_unknown_model_is_not_found(embedded: tuple[GatewayProcess, str]) -> None:
    gateway, key = embedded
    with pytest.raises(openai.NotFoundError):
        openai_client(gateway.url, key).chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "x"}], max_tokens=2
        )


def test_engine_is_reachable_only_through_the_gateway(embedded: tuple[GatewayProcess, str]) -> None:
    gateway, _ = embedded
    assert "0.0.0.0" not in gateway.logs
    host, _ = gateway.host_port
    assert host == "127.0.0.1"


def test_the_printed_openai_snippet_works_as_printed(embedded: tuple[GatewayProcess, str]) -> None:
    """The welcome message's Python lines, cut from the output and run by a shell as a user
    would paste them: the interpreter they name has the openai package."""
    process, _ = embedded
    lines = process.logs.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith(" - <<'PY'"))
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "PY")
    snippet = textwrap.dedent("\n".join(lines[start : end + 1])) + "\n"
    done = subprocess.run(
        ["bash", "-c", snippet], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_two_workers_serve_one_embedded_engine(tmp_path: Path) -> None:
    """The supervisor runs the engine once; both workers reach it with its key, handed over
    their private channels; stopping the gateway stops the engine."""
    state = tmp_path / "state"
    gateway = GatewayProcess(
        {"server": {"workers": 2, "state_dir": str(state)}}, tmp_path, ready_timeout=600
    )
    try:
        key = gateway.printed_admin_key()
        assert set(ADMIN_KEY.findall(gateway.logs)) == {key}  # one key, made once
        assert gateway.logs.count("Administrator API key") == 1  # shown once
        engines = _engines(state)
        assert len(engines) == 1, engines
        for conn in one_on_each_worker(gateway):
            assert chat(conn, key, MODEL, max_tokens=4) == 200
            conn.close()
    finally:
        gateway.stop()
    assert gateway.proc.returncode == 0, gateway.logs
    deadline = time.monotonic() + 15
    while _engines(state):
        assert time.monotonic() < deadline, "the engine outlived its gateway"
        time.sleep(0.1)


def _engines(state: Path) -> list[int]:
    """Live llama.cpp servers whose model file is in ``state``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
        if b"llama_cpp.server" in argv and str(state).encode() in b" ".join(argv) and not zombie:
            found.append(int(entry.name))
    return found
