"""deploy/container/healthcheck.py, the image's HEALTHCHECK, run as the image runs it
(``python -I``) against a real gateway, a closed port and a server that answers 503."""

from __future__ import annotations

import http.server
import importlib.util
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "container" / "healthcheck.py"


def healthcheck(**environment: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT)],
        capture_output=True,
        text=True,
        env={**clean, **environment},
        timeout=30,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    state = tmp_path_factory.mktemp("state")
    # No model server behind it: the gateway is alive all the same.
    config = base_config(f"http://127.0.0.1:{free_port()}", Keys())
    with running_gateway(config, state) as process:
        yield process


@pytest.fixture
def unavailable() -> Iterator[int]:
    class Answer503(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_live_gateway_is_healthy(gateway: GatewayProcess) -> None:
    _, port = gateway.host_port
    done = healthcheck(BASTION_SERVER__PORT=str(port))
    assert (done.returncode, done.stderr) == (0, "")


def test_a_proxy_in_the_environment_is_not_used(gateway: GatewayProcess) -> None:
    _, port = gateway.host_port
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    done = healthcheck(
        BASTION_SERVER__PORT=str(port), HTTP_PROXY=dead_proxy, http_proxy=dead_proxy, NO_PROXY=""
    )
    assert done.returncode == 0, done.stderr


def test_the_url_can_be_given_whole(gateway: GatewayProcess) -> None:
    done = healthcheck(HEALTHCHECK_URL=gateway.url + "/health")
    assert done.returncode == 0, done.stderr
    refused = healthcheck(HEALTHCHECK_URL=gateway.url + "/no-such-path")
    assert refused.returncode == 1
    assert "answered 404" in refused.stderr


def test_nothing_listening_is_unhealthy() -> None:
    done = healthcheck(BASTION_SERVER__PORT=str(free_port()))
    assert done.returncode == 1
    assert done.stderr.startswith("unhealthy: http://127.0.0.1:")


def test_a_503_is_unhealthy(unavailable: int) -> None:
    done = healthcheck(BASTION_SERVER__PORT=str(unavailable))
    assert done.returncode == 1
    assert "answered 503" in done.stderr


def test_the_default_port_is_the_images() -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.health_url({}) == "http://127.0.0.1:8080/health"
    assert module.health_url({"BASTION_SERVER__PORT": "9000"}) == "http://127.0.0.1:9000/health"
