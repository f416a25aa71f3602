"""Settings from the file, BASTION_* variables and flags: precedence, the naming convention,
values, secrets, and errors that name the variable or the file's line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bastion.errors import ConfigError
from bastion.settings import Secret
from bastion.sources import Origin, Sourced, load_settings, load_sourced

HASH = "sha256:" + "ab" * 32
MODEL = {"name": "m", "upstreams": [{"url": "http://10.0.0.5:8000"}]}


def _file(tmp_path: Path, config: dict[str, Any] | str) -> Path:
    path = tmp_path / "bastion.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def _env(**variables: str) -> dict[str, str]:
    return {f"BASTION_{name}": value for name, value in variables.items()}


def test_nested_names_set_nested_settings_and_say_so() -> None:
    sourced = load_sourced(
        None,
        _env(
            SERVER__PORT="8081",
            LIMITS__REDIS__URL="redis://10.0.0.9:6379/1",
            LIMITS__PER_KEY__REQUESTS_PER_MINUTE="60",
            LOGGING__ACCESS_LOG="false",
        ),
    )
    settings = sourced.settings
    assert settings.server.port == 8081
    assert settings.limits.redis.url == "redis://10.0.0.9:6379/1"
    assert settings.limits.per_key is not None
    assert settings.limits.per_key.requests_per_minute == 60
    assert settings.logging.access_log is False
    assert sourced.origin_of(("server", "port")) == Origin("env", "BASTION_SERVER__PORT")
    assert sourced.origin_of(("server", "host")) is None
    assert sourced.description == "the environment (4 BASTION_* variables)"


def test_names_are_case_insensitive() -> None:
    settings = load_settings(None, {"bastion_Server__Port": "9000"})
    assert settings.server.port == 9000


def test_the_environment_wins_over_the_file_and_flags_over_both(tmp_path: Path) -> None:
    path = _file(tmp_path, "server:\n  host: 10.1.1.1\n  port: 1000\n  drain_timeout: 3\n")
    sourced = load_sourced(
        path,
        _env(SERVER__PORT="2000", SERVER__HOST="10.2.2.2"),
        {"--host": (("server", "host"), "10.3.3.3")},
    )
    server = sourced.settings.server
    assert (server.host, server.port, server.drain_timeout) == ("10.3.3.3", 2000, 3)
    assert str(sourced.origin_of(("server", "host"))) == "flag --host"
    assert str(sourced.origin_of(("server", "port"))) == "env BASTION_SERVER__PORT"
    assert str(sourced.origin_of(("server", "drain_timeout"))) == f"file {path}:4"
    assert sourced.description == f"{path} and 2 BASTION_* variables"


def test_the_environment_is_only_what_the_caller_hands_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BASTION_SERVER__PORT", "8081")
    assert load_settings(None).server.port == 8080


def test_values_are_taken_as_written_not_as_yaml_would_read_them() -> None:
    settings = load_settings(
        None,
        _env(
            LIMITS__PER_KEY__CONCURRENCY="010",  # YAML 1.1 would read octal 8
            LIMITS__REDIS__KEY_PREFIX="no",  # YAML 1.1 would read false
            METRICS__TEAM_LABEL="yes",
            UPSTREAM__RETRY_WINDOW="1e1",
        ),
    )
    assert settings.limits.per_key is not None
    assert settings.limits.per_key.concurrency == 10
    assert settings.limits.redis.key_prefix == "no"
    assert settings.metrics.team_label is True
    assert settings.upstream.retry_window == 10.0


def test_lists_and_sections_are_json_or_yaml_flow() -> None:
    sourced = load_sourced(
        None,
        _env(
            MODELS='[{"name":"m","upstreams":[{"url":"http://10.0.0.5:8000"}]}]',
            NETWORK__ALLOW="[10.0.0.0/8, 192.168.0.0/16]",
            ENGINE="{kind: none}",
        ),
    )
    settings = sourced.settings
    assert [m.name for m in settings.models] == ["m"]
    assert settings.models[0].upstreams[0].url == "http://10.0.0.5:8000"
    assert settings.network.allow == ("10.0.0.0/8", "192.168.0.0/16")
    assert settings.engine.kind == "none"
    origin = sourced.origin_of(("models", 0, "upstreams", 0, "url"))
    assert origin == Origin("env", "BASTION_MODELS")


def test_a_json_object_merges_into_the_file_and_a_list_replaces(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        {
            "limits": {"backend": "memory", "per_key": {"concurrency": 2}},
            "network": {"allow": ["10.0.0.0/8", "10.1.0.0/16"]},
        },
    )
    sourced = load_sourced(
        path,
        _env(LIMITS='{"per_key": {"requests_per_minute": 5}}', NETWORK__ALLOW='["10.9.0.0/16"]'),
    )
    limits = sourced.settings.limits
    assert limits.per_key is not None
    assert (limits.per_key.concurrency, limits.per_key.requests_per_minute) == (2, 5)
    assert sourced.settings.network.allow == ("10.9.0.0/16",)
    assert str(sourced.origin_of(("limits", "per_key", "concurrency"))).startswith("file ")
    assert sourced.origin_of(("limits", "per_key", "requests_per_minute")) == Origin(
        "env", "BASTION_LIMITS"
    )


def test_a_variable_for_a_part_wins_over_json_for_the_whole() -> None:
    settings = load_settings(
        None, _env(SERVER='{"port": 1000, "host": "10.0.0.1"}', SERVER__PORT="2000")
    )
    assert (settings.server.host, settings.server.port) == ("10.0.0.1", 2000)


def test_an_index_names_an_entry_of_the_files_list_or_the_next(tmp_path: Path) -> None:
    path = _file(tmp_path, {"models": [MODEL]})
    settings = load_settings(
        path,
        _env(
            MODELS__0__UPSTREAMS__0__URL="http://10.0.0.7:8000",
            MODELS__0__UPSTREAMS__1__URL="http://10.0.0.8:8000",
            MODELS__0__UPSTREAMS__1__WEIGHT="3",
            MODELS__1__NAME="second",
            MODELS__1__UPSTREAMS__0__URL="http://10.0.0.9:8000",
        ),
    )
    assert [(m.name, [(u.url, u.weight) for u in m.upstreams]) for m in settings.models] == [
        ("m", [("http://10.0.0.7:8000", 1), ("http://10.0.0.8:8000", 3)]),
        ("second", [("http://10.0.0.9:8000", 1)]),
    ]


def test_an_index_past_the_next_entry_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, {"models": [MODEL]})
    with pytest.raises(ConfigError, match=r"BASTION_MODELS__2__NAME: models has 1 entry"):
        load_settings(path, _env(MODELS__2__NAME="x"))
    with pytest.raises(ConfigError, match=r"BASTION_MODELS__X__NAME: models is a list"):
        load_settings(path, _env(MODELS__X__NAME="x"))


def test_a_name_under_a_mapping_matches_the_files_entry_in_any_case(tmp_path: Path) -> None:
    path = _file(tmp_path, {"limits": {"users": {"Alice": {"concurrency": 2}}}})
    settings = load_settings(
        path,
        _env(
            LIMITS__USERS__ALICE__REQUESTS_PER_MINUTE="9",
            LIMITS__USERS__BATCH_BOT__CONCURRENCY="4",
            LIMITS__MODELS='{"llama-3.1-8b": {"concurrency": 32}}',
        ),
    )
    users = settings.limits.users
    assert set(users) == {"Alice", "batch_bot"}
    assert (users["Alice"].concurrency, users["Alice"].requests_per_minute) == (2, 9)
    assert users["batch_bot"].concurrency == 4
    assert settings.limits.models["llama-3.1-8b"].concurrency == 32


def test_names_only_case_tells_apart_are_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, {"roles": {"Ops": {}, "ops": {}}})
    with pytest.raises(ConfigError, match="BASTION_ROLES__OPS__MODELS: roles has entries"):
        load_settings(path, _env(ROLES__OPS__MODELS='["m"]'))


def test_null_clears_a_setting_that_may_be_null(tmp_path: Path) -> None:
    path = _file(tmp_path, {"server": {"tls": {"certificate": "/c.pem", "key": "/k.pem"}}})
    assert load_settings(path).server.tls is not None
    assert load_settings(path, _env(SERVER__TLS="null")).server.tls is None


def test_a_secret_given_whole_in_the_environment(tmp_path: Path) -> None:
    path = _file(tmp_path, {"models": [MODEL]})
    settings = load_settings(
        path,
        _env(
            MODELS__0__UPSTREAMS__0__API_KEY="sk-from-env",
            STORE__URL="postgresql://bastion:pw@db/bastion",
        ),
    )
    key = settings.models[0].upstreams[0].api_key
    assert key is not None
    assert key.resolve() == "sk-from-env"
    assert settings.store.url == "postgresql://bastion:pw@db/bastion"


def test_a_secret_from_the_environment_replaces_the_files_whole(tmp_path: Path) -> None:
    secret_file = tmp_path / "db_url"
    secret_file.write_text("postgresql://bastion@db/bastion\n")
    path = _file(
        tmp_path,
        {"store": {"url": {"env": "DB_URL"}}, "limits": {"redis": {"url": {"env": "REDIS"}}}},
    )
    sourced = load_sourced(
        path,
        _env(
            STORE__URL__FILE=str(secret_file),
            LIMITS__REDIS__URL='{"value": "redis://10.0.0.9:6379/0"}',
        ),
    )
    settings = sourced.settings
    assert settings.store.url == Secret(file=secret_file)
    assert isinstance(settings.store.url, Secret)
    assert settings.store.url.resolve() == "postgresql://bastion@db/bastion"
    assert settings.limits.redis.url == Secret(value="redis://10.0.0.9:6379/0")
    assert sourced.origin_of(("store", "url")) == Origin("env", "BASTION_STORE__URL__FILE")


def test_an_unknown_variable_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, _env(SERVER__PROT="8081"))
    assert str(caught.value) == (
        "BASTION_SERVER__PROT: no setting server.prot (did you mean BASTION_SERVER__PORT?)"
    )
    with pytest.raises(ConfigError, match=r"BASTION_STORE__DATABASE: no setting store\.database"):
        load_settings(None, _env(STORE__DATABASE="postgresql://db/bastion"))
    with pytest.raises(ConfigError, match=r"BASTION_HOST: no setting host; .*rename or unset"):
        load_settings(None, _env(HOST="jump.example.com"))
    with pytest.raises(ConfigError, match=r"BASTION_SERVER__PORT__X: server.port is a single"):
        load_settings(None, _env(SERVER__PORT__X="1"))
    with pytest.raises(ConfigError, match="BASTION_SERVER____PORT: an empty part"):
        load_settings(None, _env(SERVER____PORT="1"))


def test_an_unknown_key_inside_a_json_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^BASTION_SERVER: server.prot: unknown setting$"):
        load_settings(None, _env(SERVER='{"prot": 1}'))


def test_the_admin_commands_variables_and_others_are_not_settings() -> None:
    environ = {
        "BASTION_URL": "http://gw:8080",
        "BASTION_API_KEY": "bst_x",
        "BASTION_PURE_PYTHON": "1",  # which build runs (bastion/build.py)
        "HOME": "/root",
        "XBASTION_SERVER__PORT": "1",
    }
    sourced = load_sourced(None, environ)
    assert sourced.settings.server.port == 8080
    assert sourced.description == "built-in defaults"


def test_a_value_that_does_not_fit_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, _env(SERVER__PORT="eighty"))
    assert str(caught.value).startswith("BASTION_SERVER__PORT: server.port: Input should be")
    with pytest.raises(ConfigError, match=r"^BASTION_SERVER__PORT: server.port: .*65535"):
        load_settings(None, _env(SERVER__PORT="70000"))
    with pytest.raises(ConfigError, match=r"^BASTION_NETWORK__ALLOW: network.allow: should be a"):
        load_settings(None, _env(NETWORK__ALLOW="10.0.0.0/8"))
    with pytest.raises(ConfigError, match=r"BASTION_MODELS: models.0.upstreams.0.url: .*http"):
        load_settings(None, _env(MODELS='[{"name": "m", "upstreams": [{"url": "ftp://h"}]}]'))


def test_a_value_that_is_not_json_is_refused_without_being_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, _env(MODELS='[{"name": "secret-ish'))
    assert str(caught.value) == "BASTION_MODELS: not valid JSON (nor YAML)"


def test_two_variables_for_one_setting_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"both set server\.port"):
        load_settings(None, {"BASTION_SERVER__PORT": "1", "bastion_server__port": "2"})
    with pytest.raises(ConfigError, match=r"BASTION_STORE__URL sets store\.url and BASTION_STORE"):
        load_settings(
            None, _env(STORE__URL="postgresql://db/b", STORE__URL__FILE="/run/secrets/db")
        )


def test_errors_in_the_file_name_its_line(tmp_path: Path) -> None:
    path = _file(tmp_path, "server:\n  host: 0.0.0.0\n  prot: 80\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == f"{path}:3: server.prot: unknown setting"


def test_a_key_given_twice_in_the_file_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "server:\n  port: 80\n  host: h\n  port: 81\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == f"{path}:4: server.port is given twice (first on line 2)"


def test_an_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_settings(_file(tmp_path, "- a\n- b\n"))
    assert load_settings(_file(tmp_path, "")).server.port == 8080


def test_origins_are_kept_for_every_value_given(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "models:\n"
        "  - name: m\n"
        "    upstreams: [{url: 'http://10.0.0.5:8000'}]\n"
        "auth:\n"
        "  api_keys:\n"
        "    - name: a\n"
        f"      hash: {HASH}\n",
    )
    sourced: Sourced = load_sourced(path, _env(MODELS__0__UPSTREAMS__0__URL="http://h:1"))
    assert sourced.origin_of(("models", 0, "name")) == Origin("file", f"{path}:2")
    assert sourced.origin_of(("models", 0, "upstreams", 0, "url")) == Origin(
        "env", "BASTION_MODELS__0__UPSTREAMS__0__URL"
    )
    assert sourced.origin_of(("auth", "api_keys", 0, "hash")) == Origin("file", f"{path}:7")
