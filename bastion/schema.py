"""The JSON Schema (draft 2020-12) of the config file, made from the settings models.

``bastion config schema`` prints it; docs/bastion.schema.json is its output, for editors
(a ``# yaml-language-server: $schema=...`` line in a config file). Each setting's
description is the docstring written under it in bastion/settings.py, read here from the
source rather than by pydantic at import (``use_attribute_docstrings``), which every start
of the gateway would pay for.

The schema checks names, types, choices and ranges. Rules written as validators (URL
schemes, a key hash's form, settings that depend on each other) are checked by
``bastion config check`` only.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any

from bastion import settings

__all__ = ["DIALECT", "config_schema"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_schema() -> dict[str, Any]:
    """The schema of a Bastion config file."""
    generated = settings.Settings.model_json_schema()
    docs = _field_docstrings()
    definitions: dict[str, Any] = generated.pop("$defs")
    for name, definition in definitions.items():
        _describe(definition, docs.get(name, {}))
    _describe(generated, docs.get("Settings", {}))
    secret = definitions[settings.Secret.__name__]
    secret["minProperties"] = secret["maxProperties"] = 1  # exactly one of env, file, value
    _drop_formats(generated)
    _drop_formats(definitions)
    return {
        "$schema": DIALECT,
        "title": "Bastion configuration",
        "description": "The YAML file of `bastion serve --config FILE` "
        "(docs/configuration.md). Every key is optional; unknown keys are refused.",
        **generated,
        "$defs": definitions,
    }


def _describe(definition: dict[str, Any], docs: dict[str, str]) -> None:
    """Drop pydantic's titles (the names again), put each field's docstring on it."""
    definition.pop("title", None)
    if "description" in definition:
        definition["description"] = _plain(definition["description"])
    for name, prop in definition.get("properties", {}).items():
        prop.pop("title", None)
        if name in docs:
            prop["description"] = docs[name]


def _field_docstrings() -> dict[str, dict[str, str]]:
    """Class name -> field name -> the string literal that follows the field."""
    tree = ast.parse(inspect.getsource(settings))
    found: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = found.setdefault(node.name, {})
        for statement, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                fields[statement.target.id] = _plain(after.value.value)
    return found


def _plain(text: str) -> str:
    """A docstring as one line per paragraph, with Markdown's code marks."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    joined = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    return re.sub(r"``(.+?)``", r"`\1`", joined)


def _drop_formats(value: Any) -> None:
    """Remove ``format: path``, pydantic's own name, which no validator or editor knows."""
    if isinstance(value, dict):
        if value.get("format") == "path":
            del value["format"]
        for item in value.values():
            _drop_formats(item)
    elif isinstance(value, list):
        for item in value:
            _drop_formats(item)
