from __future__ import annotations

from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.settings import Secret, parse_settings
from bastion.sources import ConfigSource, load_settings, server_flags

GOOD_HASH = "sha256:" + "ab" * 32


def test_defaults_use_the_embedded_engine() -> None:
    settings = parse_settings({})
    assert settings.uses_engine
    assert settings.engine.served_name == "gemma-3-270m"


def test_unknown_keys_are_rejected_with_their_path() -> None:
    with pytest.raises(ConfigError, match=r"http\.max_body: unknown setting"):
        parse_settings({"http": {"max_body": 5}})
    with pytest.raises(ConfigError, match="colour: unknown setting"):
        parse_settings({"colour": "blue"})


def test_errors_name_the_offending_key() -> None:
    with pytest.raises(ConfigError, match=r"models\.0\.upstreams\.0\.url"):
        parse_settings({"models": [{"name": "m", "upstreams": [{"url": "ftp://x"}]}]})
    with pytest.raises(ConfigError, match=r"models\.0\.upstreams\.0\.url: .*without /v1"):
        parse_settings({"models": [{"name": "m", "upstreams": [{"url": "http://h:8000/v1"}]}]})
    with pytest.raises(ConfigError, match=r"auth\.api_keys\.0\.hash"):
        parse_settings({"auth": {"api_keys": [{"name": "a", "hash": "plaintext"}]}})


def test_duplicates_are_rejected() -> None:
    model = {"name": "m", "upstreams": [{"url": "http://h:1"}]}
    with pytest.raises(ConfigError, match="declared twice"):
        parse_settings({"models": [model, model]})
    key = {"name": "a", "hash": GOOD_HASH}
    with pytest.raises(ConfigError, match="same name"):
        parse_settings({"auth": {"api_keys": [key, key]}})


def test_secrets_come_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_TEST_SECRET", "from-env")
    assert Secret(env="BASTION_TEST_SECRET").resolve() == "from-env"
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    assert Secret(file=path).resolve() == "from-file"
    with pytest.raises(ConfigError, match="not set"):
        Secret(env="BASTION_TEST_MISSING").resolve()
    with pytest.raises(ConfigError, match="cannot read"):
        Secret(file=tmp_path / "nope").resolve()
    with pytest.raises(ConfigError, match="exactly one"):
        parse_settings(
            {
                "models": [
                    {
                        "name": "m",
                        "upstreams": [{"url": "http://h:1", "api_key": {"env": "A", "value": "b"}}],
                    }
                ]
            }
        )


def test_settings_are_frozen() -> None:
    settings = parse_settings({})
    with pytest.raises(ValueError, match="frozen"):
        settings.server.port = 1  # type: ignore[misc]


def test_load_settings_reports_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path)
    path.write_text("- a list")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(path)


def test_key_expiry_needs_a_time_zone() -> None:
    entry = {"name": "a", "hash": GOOD_HASH, "expires": "2030-01-01T00:00:00"}
    with pytest.raises(ConfigError, match=r"auth\.api_keys\.0\.expires: .*time zone"):
        parse_settings({"auth": {"api_keys": [entry]}})
    entry["expires"] = "2030-01-01T00:00:00Z"
    settings = parse_settings({"auth": {"api_keys": [entry]}})
    assert settings.auth.api_keys[0].expires is not None


WORKER_LIMITS = [
    {"per_key": {"requests_per_minute": 10}},
    {"keys": {"alice": {"concurrency": 2}}},
    {"roles": {"user": {"tokens_per_day": 1000}}},
    {"teams": {"research": {"tokens_per_month": 10}}},
    {"all": {"tokens_per_minute": 100}},
    {"models": {"m": {"concurrency": 4}}},
]


@pytest.mark.parametrize("limits", WORKER_LIMITS)
def test_limits_in_memory_are_refused_with_several_workers(limits: dict[str, object]) -> None:
    config = {"server": {"workers": 2}, "limits": limits}
    with pytest.raises(ConfigError, match=r"limits\.backend: redis .* or server\.workers: 1"):
        parse_settings(config)
    parse_settings({**config, "server": {"workers": 1}})  # one process counts exactly
    redis = parse_settings({**config, "limits": {**limits, "backend": "redis"}})
    assert redis.server.workers == 2


def test_several_workers_without_limits_keep_the_memory_backend() -> None:
    # priority and a bucket that limits nothing are not limits
    limits = {"priority": {"default": 1}, "per_key": {"count": "prompt", "burst": 5}}
    settings = parse_settings({"server": {"workers": 4}, "limits": limits})
    assert settings.limits.backend == "memory"
    assert settings.workers_problem is None


def test_workers_must_be_at_least_one() -> None:
    with pytest.raises(ConfigError, match=r"server\.workers"):
        parse_settings({"server": {"workers": 0}})


def test_the_command_line_server_settings_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {host: 0.0.0.0, port: 9000, workers: 3}\nmodels: []\n")
    source = ConfigSource(path, server_flags({"port": 0, "workers": 2}))
    settings = source.load()
    assert (settings.server.host, settings.server.port, settings.server.workers) == (
        "0.0.0.0",
        0,
        2,
    )
    assert source.parse(None).server.workers == 2  # the defaults, with the command line's
    with pytest.raises(ConfigError, match=r"limits\.backend: redis"):
        ConfigSource(path, server_flags({"workers": 2})).parse(
            "limits: {per_key: {concurrency: 1}}\n"
        )


def test_the_console_needs_the_store_when_asked_for() -> None:
    assert parse_settings({"store": {"enabled": False}}).console_on is False  # quietly off
    assert parse_settings({}).console_on is True
    assert parse_settings({"console": {"enabled": False}}).console_on is False
    with pytest.raises(ConfigError, match=r"console\.enabled needs the store"):
        parse_settings({"store": {"enabled": False}, "console": {"enabled": True}})


def test_console_oidc_needs_a_provider_and_the_openid_scope() -> None:
    with pytest.raises(ConfigError, match=r"console\.oidc needs an identity provider"):
        parse_settings({"console": {"oidc": {"client_id": "c"}}})
    separate = {"client_id": "c", "issuer": "https://idp.example/", "scopes": ["openid"]}
    oidc = parse_settings({"console": {"oidc": separate}}).console.oidc
    assert oidc is not None and oidc.issuer == "https://idp.example"
    with pytest.raises(ConfigError, match="must include openid"):
        parse_settings({"console": {"oidc": {**separate, "scopes": ["profile"]}}})
    with pytest.raises(ConfigError, match="only public-key algorithms"):
        parse_settings({"console": {"oidc": {**separate, "algorithms": ["HS256"]}}})
