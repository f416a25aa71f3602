from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bastion.auth.apikeys import has_valid_checksum, hash_key
from bastion.cli import main


def test_keys_generate_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert has_valid_checksum(out["key"].encode())
    assert out["hash"] == hash_key(out["key"])


def test_keys_generate_prints_a_config_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--name", "bob", "--role", "admin"]) == 0
    out = capsys.readouterr().out
    snippet = yaml.safe_load(out[out.index("auth:") :])
    entry = snippet["auth"]["api_keys"][0]
    assert entry["name"] == "bob"
    assert entry["role"] == "admin"
    assert entry["hash"].startswith("sha256:")


def test_config_check_masks_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UP_KEY", "env-secret")
    config = {
        "models": [
            {
                "name": "m",
                "upstreams": [
                    {"url": "http://h:1", "api_key": {"value": "inline-secret"}},
                    {"url": "http://h:2", "api_key": {"env": "UP_KEY"}},
                ],
            }
        ],
        "auth": {"api_keys": [{"name": "a", "hash": "sha256:" + "cd" * 32}]},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inline-secret" not in out
    assert "cdcdcd" not in out
    assert "env-secret" not in out
    effective = yaml.safe_load(out)
    assert effective["models"][0]["upstreams"][0]["api_key"] == "***"
    assert effective["models"][0]["upstreams"][1]["api_key"] == {"env": "UP_KEY"}
    assert effective["http"]["max_body_bytes"] == 16 * 1024 * 1024


def test_config_check_names_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  prot: 80\n")
    assert main(["config", "check", str(path)]) == 2
    assert "server.prot: unknown setting" in capsys.readouterr().err


def test_config_check_fails_on_unreadable_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    config = {
        "models": [
            {
                "name": "m",
                "upstreams": [{"url": "http://h:1", "api_key": {"env": "BASTION_SURELY_UNSET"}}],
            }
        ]
    }
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "check", str(path)]) == 2
    assert "BASTION_SURELY_UNSET" in capsys.readouterr().err


def test_config_check_names_an_unknown_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    entry = {"name": "a", "hash": "sha256:" + "ab" * 32, "role": "superuser"}
    path.write_text(yaml.safe_dump({"auth": {"api_keys": [entry]}}))
    assert main(["config", "check", str(path)]) == 2
    assert "auth.api_keys.0.role: unknown role 'superuser'" in capsys.readouterr().err


def test_config_check_resolves_the_store_and_redis_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"store": {"url": {"env": "BASTION_TEST_UNSET_VAR"}}}))
    assert main(["config", "check", str(path)]) == 2
    assert "store.url" in capsys.readouterr().err
    path.write_text(
        yaml.safe_dump({"limits": {"redis": {"url": {"value": "redis://:hunter2@h:6379/0"}}}})
    )
    assert main(["config", "check", str(path)]) == 0
    assert "hunter2" not in capsys.readouterr().out


def test_config_check_resolves_and_masks_the_tracing_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    headers = {"authorization": {"env": "BASTION_TEST_UNSET_VAR"}}
    path.write_text(yaml.safe_dump({"tracing": {"enabled": True, "headers": headers}}))
    assert main(["config", "check", str(path)]) == 2
    assert "tracing.headers.authorization" in capsys.readouterr().err
    headers = {"authorization": {"value": "Bearer hunter2"}}
    path.write_text(yaml.safe_dump({"tracing": {"enabled": True, "headers": headers}}))
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "authorization: '***'" in out
