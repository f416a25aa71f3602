"""``bastion probe`` run as a command against a fake vLLM and against Bastion itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.upstream.vllm_api import ROUTES, Decision, Kind
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

KEY = "vllm-key-for-the-probe-test"
HTTP_ROUTES = {r.sample_path(): frozenset(r.methods) for r in ROUTES if not r.websocket}
"""A vLLM with every route registered (a WebSocket route does not answer plain HTTP)."""


def run_probe(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    """``bastion probe URL --json ARGS``: its status, its JSON and everything it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "probe", url, "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return done.returncode, json.loads(done.stdout), done.stdout + done.stderr


def verdicts(report: dict[str, Any], field: str = "verdict") -> dict[str, str]:
    if field == "verdict":
        return {r["route"]: r["verdict"] for r in report["routes"]}
    return {r["route"]: r[field]["verdict"] for r in report["routes"]}


@pytest.fixture(scope="module")
def vllm() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(api_key=KEY, routes=HTTP_ROUTES).start()
    yield fake
    fake.stop()


def test_vllm_with_a_key_is_open_outside_its_prefixes(vllm: FakeUpstream) -> None:
    vllm.reset()
    code, report, _ = run_probe(vllm.url)
    assert code == 1
    assert report["keys_before_routing"] is True
    found = verdicts(report)
    for route in ROUTES:
        expected = "needs key" if route.guarded else "open"
        assert found[route.name] == expected, route.name
    exposed = {r.name for r in ROUTES if not r.guarded and r.kind is not Kind.INFO}
    assert set(report["open"]) == exposed
    assert {"POST /tokenize", "POST /invocations", "POST /pause"} <= exposed
    # nothing that could act was sent: GETs without a body, and no key
    assert {s.method for s in vllm.seen} == {"GET"}
    assert all(s.body == b"" and "authorization" not in s.headers for s in vllm.seen)


def test_the_key_opens_the_guarded_routes_and_is_never_printed(
    vllm: FakeUpstream, tmp_path: Path
) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY + "\n")
    for source, env in ((f"file:{secret}", {}), ("env:PROBE_TEST_KEY", {"PROBE_TEST_KEY": KEY})):
        vllm.reset()
        code, report, printed = run_probe(vllm.url, "--key", source, env=env)
        assert code == 1
        keyed = verdicts(report, "with_key")
        assert keyed.pop("WS /v1/realtime") == "absent"  # past the key: no HTTP route there
        # past the key, a made-up response id is vLLM's 404, which reads as nothing certain
        assert keyed.pop("GET /v1/responses/{response_id}") == "unknown"
        assert set(keyed.values()) == {"open"}
        assert KEY not in printed
        sent = [s.headers.get("authorization") for s in vllm.seen + vllm.health_checks]
        assert sent.count(f"Bearer {KEY}") == len(ROUTES)


def test_a_vllm_with_only_guarded_routes_is_clean() -> None:
    guarded = {p: m for p, m in HTTP_ROUTES.items() if p.startswith("/v1")}
    fake = FakeUpstream(api_key=KEY, routes={**guarded, "/metrics": frozenset({"GET"})}).start()
    try:
        code, report, _ = run_probe(fake.url)
    finally:
        fake.stop()
    assert code == 0
    found = verdicts(report)
    assert found["POST /tokenize"] == "absent"
    assert found["POST /v1/chat/completions"] == "needs key"
    assert found["GET /metrics"] == "open"  # information, not a door: reported, not failed
    assert report["open"] == []


def test_the_table_for_people(vllm: FakeUpstream) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "probe", vllm.url, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[2].split() == ["route", "kind", "answer", "verdict"]
    row = next(line for line in lines if line.startswith("POST /v1/chat/completions "))
    assert row.split() == ["POST", "/v1/chat/completions", "inference", "401", "needs", "key"]
    assert lines[-1].startswith("OPEN WITHOUT A KEY: ")


def test_an_unreachable_server_exits_3(vllm: FakeUpstream) -> None:
    fake = FakeUpstream().start()
    url = fake.url
    fake.stop()
    code, report, _ = run_probe(url, "--timeout", "2")
    assert code == 3
    assert report == {"url": url, "unreachable": "connection refused", "exit_code": 3}


@pytest.fixture(scope="module")
def bastion(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Bastion with every endpoint it has: control routes open to admins."""
    config = base_config(
        upstream.url,
        keys,
        routes={"control": "admin"},
        auth={"api_keys": keys.config(), "brute_force": {"max_failures": 0}},
    )
    with running_gateway(config, tmp_path_factory.mktemp("state")) as process:
        yield process


def test_through_bastion_every_route_needs_a_key_or_is_absent(
    bastion: GatewayProcess, upstream: FakeUpstream
) -> None:
    code, report, _ = run_probe(bastion.url)
    assert code == 0 and report["open"] == []
    found = verdicts(report)
    for route in ROUTES:
        if route.decision is Decision.NEVER:
            expected = {"unknown" if route.path == "/static/{path}" else "absent"}
        elif route.path == "/health":
            expected = {"open"}
        else:
            expected = {"needs key"}
        assert found[route.name] in expected, route.name
    assert upstream.seen == []  # no probe went further than the gateway


def test_through_bastion_an_admin_key_opens_what_bastion_serves(
    bastion: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    code, report, _ = run_probe(bastion.url, "--key", "env:ADMIN", env={"ADMIN": keys.admin})
    assert code == 0
    keyed = verdicts(report, "with_key")
    never = {r.name for r in ROUTES if r.decision is Decision.NEVER} - {"GET /static/{path}"}
    assert {keyed[name] for name in never} == {"absent"}
    # a made-up response id is nobody's: 404 even for an administrator (owner only), for
    # every method
    assert keyed.pop("GET /v1/responses/{response_id}") == "unknown"
    assert keyed.pop("POST /v1/responses/{response_id}/cancel") == "absent"
    served = [r for r in ROUTES if r.decision is not Decision.NEVER and r.name in keyed]
    assert {r.name: keyed[r.name] for r in served} == {r.name: "open" for r in served}
    # GET routes answered for real; only GET control routes reach the upstream
    assert {s.method for s in upstream.seen} <= {"GET"}
