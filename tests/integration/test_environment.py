"""A real ``bastion serve`` configured by BASTION_* variables: alone (no file, as a container
would run it), and over a file, where a reload reads both again."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import yaml

from tests.integration.conftest import closed_port
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys

HI = [{"role": "user", "content": "hi"}]


def test_serves_with_no_file_from_the_environment_alone(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    keys = Keys()
    model = {"name": "env-model", "upstreams": [{"url": upstream.url}]}
    env = {
        "BASTION_SERVER__STATE_DIR": str(tmp_path),
        "BASTION_MODELS": json.dumps([model]),
        # a secret from another variable, set on the list's entry by its index
        "BASTION_MODELS__0__UPSTREAMS__0__API_KEY__ENV": "ENV_TEST_UPSTREAM_KEY",
        "ENV_TEST_UPSTREAM_KEY": "upstream-key-from-env",
        "BASTION_AUTH__API_KEYS": json.dumps(keys.config()),
        "bastion_limits__per_key__requests_per_minute": "600",
        "BASTION_STORE__ENABLED": "false",
    }
    gateway = GatewayProcess(None, tmp_path, env=env)
    try:
        client = openai_client(gateway.url, keys.user)
        assert [m.id for m in client.models.list()] == ["env-model"]
        answer = client.chat.completions.create(model="env-model", messages=HI)
        assert answer.choices[0].message.content
        assert upstream.seen[-1].headers["authorization"] == "Bearer upstream-key-from-env"
        assert "upstream-key-from-env" not in gateway.logs
        assert "serving env-model" in gateway.logs
        assert "engine" not in gateway.logs  # no embedded engine: the models came from the env
    finally:
        gateway.stop()


def _reload(gateway: GatewayProcess) -> None:
    before = gateway.logs.count("configuration reloaded")
    gateway.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gateway.logs.count("configuration reloaded") == before:
        assert "reload refused" not in gateway.logs, gateway.logs
        assert time.monotonic() < deadline, gateway.logs
        time.sleep(0.02)


def test_a_reload_reads_the_file_and_the_environment_again(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    keys = Keys()
    config = {
        "server": {"state_dir": str(tmp_path)},
        # the file's upstream is closed: only the environment's makes the model answer
        "models": [{"name": "first", "upstreams": [{"url": f"http://127.0.0.1:{closed_port()}"}]}],
        "auth": {"api_keys": keys.config()},
        "store": {"enabled": False},
    }
    env = {"BASTION_MODELS__0__UPSTREAMS__0__URL": upstream.url}
    gateway = GatewayProcess(config, tmp_path, env=env)
    try:
        client = openai_client(gateway.url, keys.user)
        assert client.chat.completions.create(model="first", messages=HI).choices
        config["models"].append({"name": "second", "upstreams": [{"url": upstream.url}]})
        path = tmp_path / "bastion.yaml"
        path.with_suffix(".tmp").write_text(yaml.safe_dump(config))
        path.with_suffix(".tmp").replace(path)
        _reload(gateway)
        assert "and 1 BASTION_* variable" in gateway.logs
        assert sorted(m.id for m in client.models.list()) == ["first", "second"]
        assert client.chat.completions.create(model="second", messages=HI).choices
        assert client.chat.completions.create(model="first", messages=HI).choices
    finally:
        gateway.stop()
