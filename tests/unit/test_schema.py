"""The config file's JSON Schema: published as generated, valid draft 2020-12, and in
agreement with the settings on the documents' examples and on broken configs."""

from __future__ import annotations

import datetime
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from bastion.errors import ConfigError
from bastion.schema import config_schema
from bastion.settings import ServerSettings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "docs" / "bastion.schema.json"
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)
"""A block fenced as plain ```yaml is a Bastion config; other YAML (a Compose file, a
Kubernetes manifest) is fenced with its name after the language (```yaml compose.yaml)."""
PLACEHOLDER_HASH = "sha256:..."
"""What the documents write for a key hash (`bastion keys generate` prints a real one)."""


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(config_schema())


def _examples() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{document.relative_to(ROOT)}:{line}", match.group(1)))
    return found


EXAMPLES = _examples()


def _as_an_editor_reads(value: Any) -> Any:
    """YAML as JSON: timestamps stay strings for a YAML 1.2 editor, as for pydantic."""
    if isinstance(value, dict):
        return {k: _as_an_editor_reads(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_an_editor_reads(v) for v in value]
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def test_the_published_schema_is_the_generated_one() -> None:
    generated = json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"
    assert PUBLISHED.read_text() == generated, (
        "docs/bastion.schema.json is out of date: regenerate it with "
        "`.venv/bin/bastion config schema > docs/bastion.schema.json`"
    )


def test_the_schema_is_draft_2020_12_with_the_settings_docstrings() -> None:
    schema = config_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    server = schema["$defs"]["ServerSettings"]["properties"]
    assert server["state_dir"]["description"] == (
        "Where Bastion keeps its own state (bootstrap admin key, assembled model files)."
    )
    assert "title" not in server["port"]
    assert ServerSettings.model_fields["port"].description is None  # nothing paid at import
    redis = schema["$defs"]["RedisSettings"]["properties"]["lease_seconds"]["description"]
    assert "\n" not in redis  # a paragraph on one line
    assert "`bastion config check` shows `***`" in schema["$defs"]["Secret"]["description"]


def test_the_documents_have_config_examples() -> None:
    assert len(EXAMPLES) >= 15
    assert any("yaml-language-server: $schema=" in block for _, block in EXAMPLES)


@pytest.mark.parametrize(("where", "block"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_example_config_is_valid_for_the_schema_and_the_settings(
    where: str, block: str
) -> None:
    data = yaml.safe_load(block.replace(PLACEHOLDER_HASH, "sha256:" + "ab" * 32))
    errors = [e.message for e in _validator().iter_errors(_as_an_editor_reads(data))]
    assert errors == []
    parse_settings(data, where)


BROKEN = [
    {"server": {"port": 70000}},
    {"server": {"prot": 80}},
    {"colour": "blue"},
    {"logging": {"level": "loud"}},
    {"http": {"max_body_bytes": 0}},
    {"models": [{"name": "m", "upstreams": []}]},
    {"models": [{"name": "m", "upstreams": [{"url": "http://h:1", "api_key": {}}]}]},
    {"models": [{"name": "m", "upstreams": [{"url": "http://h:1", "api_key": "sk-plain"}]}]},
    {"store": {"url": {"env": "DB", "file": "/run/secrets/db"}}},
    {"network": {"allow": "10.0.0.0/8"}},
    {"limits": {"users": {"alice": {"concurency": 3}}}},
]


@pytest.mark.parametrize("config", BROKEN, ids=[json.dumps(c) for c in BROKEN])
def test_a_broken_config_is_refused_by_both(config: dict[str, Any]) -> None:
    assert list(_validator().iter_errors(config)) != []
    with pytest.raises(ConfigError):
        parse_settings(config)
