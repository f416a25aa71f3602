from __future__ import annotations

from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.settings import Secret, parse_settings
from bastion.sources import load_settings

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
