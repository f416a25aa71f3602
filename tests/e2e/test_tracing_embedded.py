"""A traced request through the real embedded engine (llama.cpp with Gemma 3 270M): its trace
reaches an OTLP receiver with the gateway's span and its call to the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import openai_client
from tests.support.gateway import GatewayProcess
from tests.support.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e

MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver().start()
    yield found
    found.stop()


@pytest.fixture(scope="module")
def traced_engine(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    home = Path(tmp_path_factory.mktemp("traced-engine"))
    config = {
        "server": {"state_dir": str(home / "state")},
        "tracing": {"enabled": True, "endpoint": receiver.url, "export_interval": 0.1},
    }
    process = GatewayProcess(config, home, ready_timeout=600)
    try:
        yield process, process.printed_admin_key()
    finally:
        process.stop()


def test_the_engine_call_is_in_the_trace(
    traced_engine: tuple[GatewayProcess, str], receiver: OtlpReceiver
) -> None:
    gateway, key = traced_engine
    reply = openai_client(gateway.url, key, timeout=120).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert reply.usage is not None
    spans = receiver.wait_for(lambda s: {x.kind for x in s} >= {2, 3}, timeout=30)
    (server,) = [s for s in spans if s.kind == 2]
    (client,) = [s for s in spans if s.kind == 3]
    assert client.trace_id == server.trace_id and client.parent_id == server.span_id
    assert client.name == f"chat {MODEL}"
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["http.response.status_code"] == 200
    assert server.attributes["gen_ai.request.model"] == MODEL
    assert server.attributes["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert server.attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert server.attributes["gen_ai.response.finish_reasons"] in (("stop",), ("length",))
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    assert all(b"Say hello." not in body for body in receiver.bodies)
