"""Configuration reload (SIGHUP and the admin API): applied at once, nothing dropped."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def second() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def _rewrite(gateway: GatewayProcess, config: dict[str, Any]) -> None:
    path = gateway.workdir / "bastion.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    tmp.replace(path)  # as an editor or a config manager would: never half a file


def _sighup(gateway: GatewayProcess, outcome: str) -> str:
    """Send SIGHUP and wait for the log line that says how the reload went."""
    before = gateway.logs.count(outcome)
    gateway.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gateway.logs.count(outcome) == before:
        assert time.monotonic() < deadline, gateway.logs
        time.sleep(0.02)
    return gateway.logs


def _request(conn: http.client.HTTPConnection, key: str, body: dict[str, Any]) -> int:
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    response.read()
    return response.status


def test_sighup_adds_a_key_and_a_model_and_removes_a_key_without_dropping_anything(
    upstream: FakeUpstream, second: FakeUpstream, tmp_path: Path
) -> None:
    keys = Keys()
    config = base_config(upstream.url, keys)
    release = threading.Event()
    upstream.behaviour.hold_after_first = release
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        host, port = gateway.host_port
        kept_alive = http.client.HTTPConnection(host, port, timeout=10)
        assert _request(kept_alive, keys.admin, {"model": "test-model", "messages": HI}) == 200
        # a stream in flight across the reload
        streaming = openai_client(gateway.url, keys.admin).chat.completions.create(
            model="test-model", messages=HI, stream=True
        )
        first = next(iter(streaming))
        assert first.choices[0].delta.content == "tok0 "

        bob = generate_key()
        config["auth"]["api_keys"] = [
            {"name": "root", "hash": hash_key(keys.admin), "role": "admin"},
            {"name": "bob", "hash": hash_key(bob), "role": "user"},
        ]  # alice removed, bob added
        config["models"].append({"name": "second-model", "upstreams": [{"url": second.url}]})
        _rewrite(gateway, config)
        logs = _sighup(gateway, "configuration reloaded")
        assert "serving test-model, second-model" in logs

        release.set()
        rest = [c.choices[0].delta.content for c in streaming if c.choices]
        assert rest == ["tok1 ", "tok2 "]  # the stream finished
        # the connection opened before the reload is still served
        assert _request(kept_alive, keys.admin, {"model": "second-model", "messages": HI}) == 200
        kept_alive.close()
        assert len(second.seen) == 1
        reply = openai_client(gateway.url, bob).chat.completions.create(
            model="second-model", messages=HI
        )
        assert reply.choices[0].message.content == "Hello from upstream"
        with pytest.raises(openai.AuthenticationError):
            openai_client(gateway.url, keys.user).models.list()


def test_an_invalid_config_is_refused_and_the_old_one_keeps_running(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    keys = Keys()
    config = base_config(upstream.url, keys)
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        broken = dict(config, models=[{"name": "m", "upstreams": [{"url": "ftp://nowhere"}]}])
        _rewrite(gateway, broken)
        logs = _sighup(gateway, "configuration reload refused")
        assert "the running one stays" in logs
        assert "must start with http:// or https://" in logs  # says why
        _rewrite(gateway, {**config, "no_such_section": 1})
        logs = _sighup(gateway, "configuration reload refused")
        assert "no_such_section" in logs
        reply = openai_client(gateway.url, keys.user).chat.completions.create(
            model="test-model", messages=HI
        )
        assert reply.choices
        assert gateway.proc.poll() is None


def _admin(gateway: GatewayProcess, key: str, method: str, path: str) -> tuple[int, Any]:
    host, port = gateway.host_port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


def test_the_admin_api_reloads_reports_and_audits(upstream: FakeUpstream, tmp_path: Path) -> None:
    keys = Keys()
    config = base_config(upstream.url, keys)
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        status, body = _admin(gateway, keys.user, "POST", "/admin/v1/reload")
        assert status == 403  # a user has no admin permission at all

        config["server"]["drain_timeout"] = 5  # only a restart changes it
        config["limits"] = {"per_key": {"requests_per_minute": 1000}}
        _rewrite(gateway, config)
        status, body = _admin(gateway, keys.admin, "POST", "/admin/v1/reload")
        assert status == 200, body
        assert body["models"] == ["test-model"]
        assert body["restart_required"] == ["server"]
        reply = openai_client(gateway.url, keys.user).chat.completions.with_raw_response.create(
            model="test-model", messages=HI
        )
        assert reply.headers["x-ratelimit-limit-requests"] == "1000"  # the new limits apply

        _rewrite(gateway, {**config, "roles": {"reader": {"routes": ["no-such-permission"]}}})
        status, body = _admin(gateway, keys.admin, "POST", "/admin/v1/reload")
        assert status == 422
        assert body["error"]["code"] == "invalid_config"
        assert "no-such-permission" in body["error"]["message"]

        status, body = _admin(gateway, keys.admin, "GET", "/admin/v1/audit?action=config.reload")
        assert [e["outcome"] for e in body["data"]] == ["failed", "ok"]  # newest first


def test_the_cli_reloads_a_running_gateway(upstream: FakeUpstream, tmp_path: Path) -> None:
    keys = Keys()
    config = base_config(upstream.url, keys)
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        config["server"]["drain_timeout"] = 7
        _rewrite(gateway, config)
        env = {**os.environ, "BASTION_API_KEY": keys.admin}
        env.pop("BASTION_URL", None)
        done = subprocess.run(
            [sys.executable, "-m", "bastion", "reload", "--url", gateway.url],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "serving test-model" in done.stdout
        assert "needs a restart to take effect: server" in done.stdout
        local = subprocess.run(
            [sys.executable, "-m", "bastion", "reload"],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
        assert local.returncode == 2
        assert "SIGHUP" in local.stderr
