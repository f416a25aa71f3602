from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bastion import __version__, build
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


def _comments(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("#")]


def test_config_check_says_where_each_value_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bastion.yaml"
    written = ["server:", "  host: 10.0.0.1", "models:", "  - name: m", "    upstreams:"]
    path.write_text("\n".join([*written, "      - url: http://h:1", ""]))
    monkeypatch.setenv("BASTION_SERVER__PORT", "8081")
    monkeypatch.setenv("BASTION_MODELS__0__UPSTREAMS__0__API_KEY", "sk-env-secret")
    monkeypatch.setenv("BASTION_STORE__URL", "postgresql://bastion:db-password@db/bastion")
    assert main(["config", "check", str(path), "--host", "0.0.0.0"]) == 0
    out = capsys.readouterr().out
    assert "sk-env-secret" not in out
    assert "db-password" not in out
    lines = _comments(out)
    assert lines[0] == f"# {path} and 3 BASTION_* variables: valid"
    rows = {line.split()[1]: line.split()[2:] for line in lines[2:-1]}
    assert lines[-1] == f"# to run on: bastion {__version__}, {build.describe()}"
    assert rows == {
        "server.host": ["0.0.0.0", "flag", "--host"],
        "server.port": ["8081", "env", "BASTION_SERVER__PORT"],
        "models.0.name": ["m", "file", f"{path}:4"],
        "models.0.upstreams.0.url": ["http://h:1", "file", f"{path}:6"],
        "models.0.upstreams.0.api_key": ["***", "env", "BASTION_MODELS__0__UPSTREAMS__0__API_KEY"],
        "store.url": ["postgresql://bastion:***@db/bastion", "env", "BASTION_STORE__URL"],
    }
    given, defaults = (int(n) for n in re.findall(r"\d+", lines[1]))
    assert given == 6
    assert lines[1] == f"# 6 settings given, {defaults} at their defaults:"
    assert defaults > 90
    effective = yaml.safe_load(out)  # still the effective configuration, as YAML
    assert effective["server"]["host"] == "0.0.0.0"
    assert effective["server"]["port"] == 8081
    assert effective["server"]["drain_timeout"] == 30.0
    assert effective["store"]["url"] == "postgresql://bastion:***@db/bastion"


def test_config_check_without_a_file_checks_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert _comments(out)[:2][0] == "# built-in defaults: valid"
    assert _comments(out)[1].startswith("# 0 settings given, ")
    monkeypatch.setenv("BASTION_ENGINE__KIND", "none")
    assert main(["config", "check"]) == 0
    lines = _comments(capsys.readouterr().out)
    assert lines[0] == "# the environment (1 BASTION_* variable): valid"
    assert lines[2].split() == ["#", "engine.kind", "none", "env", "BASTION_ENGINE__KIND"]


def test_config_check_refuses_an_unknown_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_LIMITS__PER_KEY__RPM", "60")
    assert main(["config", "check"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = "BASTION_LIMITS__PER_KEY__RPM: no setting limits.per_key.rpm"
    assert captured.err == f"bastion: error: {message}\n"


def test_config_schema_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from bastion.schema import config_schema

    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_schema()


def test_serve_with_workers_refuses_limits_kept_in_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    config = {
        "models": [{"name": "m", "upstreams": [{"url": "http://127.0.0.1:1"}]}],
        "limits": {"per_user": {"requests_per_minute": 5}},
    }
    path.write_text(yaml.safe_dump(config))
    assert main(["serve", "--config", str(path), "--workers", "2"]) == 2
    error = capsys.readouterr().err
    assert "server.workers: 2" in error
    assert "use limits.backend: redis" in error.lower()
    assert "or server.workers: 1" in error


def test_the_worker_command_is_not_offered_to_people(capsys: pytest.CaptureFixture[str]) -> None:
    from bastion.cli import WORKER_COMMAND
    from bastion.server import children

    assert children.WORKER_COMMAND == WORKER_COMMAND  # the supervisor starts what the CLI runs
    with pytest.raises(SystemExit):
        main(["--help"])
    assert WORKER_COMMAND not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--workers" in capsys.readouterr().out
    assert main([WORKER_COMMAND, "not-a-number"]) != 0  # not a crash into a traceback


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
