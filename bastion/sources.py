"""Where the settings come from: the YAML file, ``BASTION_*`` environment variables and
command-line flags, merged in that order (a later source wins), each value remembered with
its origin for ``bastion config check`` and for error messages.

The environment convention (docs/configuration.md, "From the environment"):

- ``BASTION_`` then the path of a setting, its parts joined by ``__``:
  ``BASTION_SERVER__PORT=8081``, ``BASTION_LIMITS__PER_KEY__REQUESTS_PER_MINUTE=60``.
  Names are case-insensitive. A part under a mapping of user-chosen names (``roles``,
  ``limits.users``, ``usage.prices``...) names an entry: the file's entry whose name matches
  regardless of case, or else a new entry named in lower case. Names the environment cannot
  spell (capitals, dashes, dots) are given by setting the mapping above them as JSON.
  A part under a list is an index: an entry of the file's list, or the next one.
- A value for a list, a mapping or a section is JSON (or YAML flow: ``[a, b]``); any other
  value is taken as written, and converted as a value in the file would be (``8081``,
  ``true``); ``null`` clears a setting that may be null. A JSON object is merged into the
  section it sets; a list replaces the file's; a secret (``{env: ...}``, ``{file: ...}``)
  is replaced whole.
- A ``BASTION_`` variable that names no setting is an error, except :data:`CLIENT_VARIABLES`,
  which the admin commands read as a client of a running gateway, and
  :data:`~bastion.build.PURE_PYTHON_ENV`, which chooses the build that runs.

Only :class:`ConfigSource` (what ``bastion serve`` and its workers use) reads the process
environment, at each parse, so a reload reads it again exactly as at start; the functions
are handed it.
"""

from __future__ import annotations

import difflib
import json
import os
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from bastion.build import PURE_PYTHON_ENV
from bastion.errors import ConfigError
from bastion.settings import Secret, Settings, parse_settings

__all__ = [
    "CLIENT_VARIABLES",
    "PREFIX",
    "ConfigSource",
    "KeyPath",
    "Origin",
    "Sourced",
    "dotted",
    "load_settings",
    "load_sourced",
    "read_file",
    "server_flags",
]

PREFIX = "BASTION_"
SEPARATOR = "__"
CLIENT_VARIABLES = frozenset({"BASTION_URL", "BASTION_API_KEY"})
"""Read by ``bastion users|keys|...`` to reach a running gateway; not settings."""

Key = str | int
KeyPath = tuple[Key, ...]


@dataclass(frozen=True)
class Origin:
    """Where one value came from: ``file bastion.yaml:12``, ``env BASTION_SERVER__PORT``,
    ``flag --port``."""

    kind: Literal["file", "env", "flag"]
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Sourced:
    """Validated settings, the origin of every value not left at its default, and a short
    description of the sources (for logs: ``bastion.yaml and 2 BASTION_* variables``)."""

    settings: Settings
    origins: Mapping[KeyPath, Origin]
    description: str

    def origin_of(self, path: KeyPath) -> Origin | None:
        """The origin of the value at ``path``: its own, else one set below it (a secret
        shown as one value), else the nearest one above it (a list set whole)."""
        return _origin_of(self.origins, path)


def dotted(path: KeyPath) -> str:
    """``models.0.upstreams.0.url``, as validation errors name settings."""
    return ".".join(str(p) for p in path) or "(top level)"


def load_settings(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, tuple[KeyPath, Any]] | None = None,
) -> Settings:
    """The settings from ``path`` (``None``: no file), overridden by ``BASTION_*`` variables
    of ``environ`` (``None``: none), overridden by ``flags``."""
    return load_sourced(path, environ, flags).settings


def load_sourced(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, tuple[KeyPath, Any]] | None = None,
    *,
    text: str | None = None,
) -> Sourced:
    """As :func:`load_settings`, keeping each value's origin. ``flags`` maps a flag's name
    (``--port``) to the setting it sets and its value. With ``text``, that is the file's
    content, already read (a supervisor reads the file once for all its workers)."""
    layers = _Layers()
    if path is not None:
        if text is None:
            text = read_file(path)
        layers.data, layers.origins = _parse_file(text, path)
    found = _environment(environ or {}, layers.data)
    for override in found:
        layers.put(override.path, override.value, Origin("env", override.name))
    for flag, (where, value) in (flags or {}).items():
        layers.put(where, value, Origin("flag", flag))
    description = _describe_sources(path, len(found))
    settings = parse_settings(
        layers.data, description, origin=lambda loc: _label(layers.origins, loc, description)
    )
    return Sourced(settings, dict(layers.origins), description)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where ``bastion serve`` takes its configuration from: a file (or none), the process
    environment (read at each :meth:`parse`, so a reload sees it as a start does) and the
    command line's flags. Reading (:meth:`read`) and validating (:meth:`parse`) are apart, so
    that a supervisor reads the file once and hands the same text to its workers."""

    path: Path | None = None
    flags: Mapping[str, tuple[KeyPath, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "built-in defaults"

    def read(self) -> str | None:
        """The file's text (``None``: no file)."""
        return None if self.path is None else read_file(self.path)

    def parse(self, text: str | None) -> Settings:
        """Validate ``text`` (as :meth:`read` returned it) with the environment and flags."""
        return self.sourced(text).settings

    def sourced(self, text: str | None) -> Sourced:
        path = self.path if text is not None else None
        return load_sourced(path, os.environ, self.flags, text=text)

    def load(self) -> Settings:
        return self.parse(self.read())


def server_flags(server: Mapping[str, Any]) -> dict[str, tuple[KeyPath, Any]]:
    """``server`` settings given on the command line (``{"port": 8081}``) as flags."""
    return {f"--{name}": (("server", name), value) for name, value in server.items()}


def _describe_sources(path: Path | None, variables: int) -> str:
    env = f"{variables} BASTION_* variable{'s' if variables != 1 else ''}"
    if path is not None:
        return f"{path} and {env}" if variables else str(path)
    return f"the environment ({env})" if variables else "built-in defaults"


# The file ---------------------------------------------------------------------------------


def read_file(path: Path) -> str:
    """The config file's text."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _parse_file(text: str, path: Path) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None or root is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    origins: dict[KeyPath, Origin] = {}
    _lines(root, (), path, origins)
    return data, origins


def _lines(node: yaml.Node, at: KeyPath, path: Path, origins: dict[KeyPath, Origin]) -> None:
    """Record the line of every key and list item under ``node``; refuse a key given twice
    in one mapping (YAML would silently keep the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
                continue
            line = key.start_mark.line + 1
            if key.value in seen:
                raise ConfigError(
                    f"{path}:{line}: {dotted((*at, key.value))} is given twice "
                    f"(first on line {seen[key.value]})"
                )
            seen[key.value] = line
            origins[(*at, key.value)] = Origin("file", f"{path}:{line}")
            _lines(value, (*at, key.value), path, origins)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            origins[(*at, index)] = Origin("file", f"{path}:{item.start_mark.line + 1}")
            _lines(item, (*at, index), path, origins)


# The environment --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Override:
    name: str
    path: KeyPath
    value: Any


def _environment(environ: Mapping[str, str], data: dict[str, Any]) -> list[_Override]:
    """The ``BASTION_*`` variables as settings, sorted so that a variable setting a section
    comes before those setting parts of it (which then win)."""
    found: dict[KeyPath, _Override] = {}
    for name, text in environ.items():
        upper = name.upper()
        if not upper.startswith(PREFIX) or upper in CLIENT_VARIABLES or upper == PURE_PYTHON_ENV:
            continue
        path, annotation = _resolve(name, data)
        if path in found:
            raise ConfigError(f"{found[path].name} and {name} both set {dotted(path)}")
        found[path] = _Override(name, path, _value(name, text, annotation))
    for override in found.values():
        for depth in range(1, len(override.path)):
            outer = found.get(override.path[:depth])
            if outer is not None and not isinstance(outer.value, dict | list):
                raise ConfigError(
                    f"{outer.name} sets {dotted(outer.path)} and {override.name} a part of "
                    "it: give one of them"
                )
    return sorted(found.values(), key=lambda o: [(isinstance(k, str), k) for k in o.path])


def _resolve(name: str, data: dict[str, Any]) -> tuple[KeyPath, Any]:
    """The setting a variable names, and its type; a name that is none is an error."""
    parts = name[len(PREFIX) :].split(SEPARATOR)
    if not all(parts):
        raise ConfigError(f"{name}: an empty part between '{SEPARATOR}' separators")
    annotation: Any = Settings
    path: list[Key] = []
    node: Any = data
    for part in parts:
        key, annotation = _step(name, tuple(path), part, annotation, node)
        path.append(key)
        node = _child(node, key)
    return tuple(path), annotation


def _step(name: str, at: KeyPath, part: str, annotation: Any, node: Any) -> tuple[Key, Any]:
    arms = _arms(annotation)
    models = [a for a in arms if _is_model(a)]
    if models:
        fields = models[0].model_fields
        wanted = part.lower()
        if wanted not in fields:
            raise ConfigError(_unknown(name, at, wanted, sorted(fields)))
        return wanted, fields[wanted].annotation
    for arm in arms:
        if get_origin(arm) is dict:
            return _entry(name, at, part, node), get_args(arm)[1]
        if get_origin(arm) is tuple:
            if not part.isdigit():
                raise ConfigError(
                    f"{name}: {dotted(at)} is a list: give it whole as JSON, or an entry by "
                    f"its index ({PREFIX}{SEPARATOR.join(str(k).upper() for k in at)}__0__...)"
                )
            return int(part), get_args(arm)[0]
    raise ConfigError(f"{name}: {dotted(at)} is a single value; it has no {part.lower()!r}")


def _unknown(name: str, at: KeyPath, wanted: str, known: list[str]) -> str:
    message = f"{name}: no setting {dotted((*at, wanted))}"
    close = difflib.get_close_matches(wanted, known, n=1)
    if close:
        suggestion = SEPARATOR.join(str(k).upper() for k in (*at, close[0]))
        message += f" (did you mean {PREFIX}{suggestion}?)"
    elif not at:
        message += (
            f"; {PREFIX}* variables set settings ({PREFIX}SERVER__PORT=8081): rename or unset "
            "this one"
        )
    return message


def _entry(name: str, at: KeyPath, part: str, node: Any) -> str:
    """The mapping entry a part names: the file's, matched regardless of case, or a new one
    in lower case."""
    if isinstance(node, dict):
        matches = [k for k in node if isinstance(k, str) and k.lower() == part.lower()]
        if len(matches) > 1:
            raise ConfigError(
                f"{name}: {dotted(at)} has entries {', '.join(map(repr, matches))}, which the "
                "environment cannot tell apart: set the whole mapping as JSON"
            )
        if matches:
            return matches[0]
    return part.lower()


def _child(node: Any, key: Key) -> Any:
    if isinstance(key, int):
        return node[key] if isinstance(node, list) and key < len(node) else None
    return node.get(key) if isinstance(node, dict) else None


def _value(name: str, text: str, annotation: Any) -> Any:
    """A variable's text as the value for a setting of this type (see the module's
    docstring)."""
    arms = _arms(annotation)
    if text.strip().lower() == "null" and type(None) in arms:
        return None
    structured = [a for a in arms if _is_model(a) or get_origin(a) in (dict, tuple)]
    if not structured:
        return text
    if Secret in arms and str not in arms and not text.lstrip().startswith("{"):
        return {"value": text}  # the environment holds the secret itself
    either = len(structured) < len([a for a in arms if a is not type(None)])
    if either and not text.lstrip().startswith(("{", "[")):
        return text  # a value or a structure (``str | Secret``, ``str | tuple[str, ...]``)
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{name}: not valid JSON (nor YAML)") from None  # never echo a value


def _arms(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


# Merging ----------------------------------------------------------------------------------


@dataclass
class _Layers:
    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, Origin] = field(default_factory=dict)
    _secrets: set[KeyPath] = field(default_factory=set)
    """Secrets a later source has already replaced (its further parts then add to it)."""

    def put(self, path: KeyPath, value: Any, origin: Origin) -> None:
        """Set ``value`` at ``path``, over what is there."""
        parent: Any = None
        node: Any = self.data
        annotation: Any = Settings
        for depth, key in enumerate(path):
            here = path[:depth]
            if depth and Secret in _arms(annotation) and here not in self._secrets:
                # a secret is one choice (env, file or value): the new source's replaces it
                self._secrets.add(here)
                self._drop(here)
                node = {}
                _set(origin, here[:-1], parent, here[-1], node)
            annotation = _field_type(annotation, key)
            if depth == len(path) - 1:
                break
            wanted = list if isinstance(path[depth + 1], int) else dict
            child = _child(node, key)
            if not isinstance(child, wanted):
                child = wanted()
                _set(origin, here, node, key, child)
            parent, node = node, child
        if Secret in _arms(annotation):
            self._secrets.add(path)
        merged = _merge(_child(node, path[-1]), value, annotation)
        if merged is value:
            self._drop(path)
        _set(origin, path[:-1], node, path[-1], merged)
        self.origins[path] = origin
        for below in _paths(value):
            self.origins[(*path, *below)] = origin

    def _drop(self, path: KeyPath) -> None:
        for known in [p for p in self.origins if p[: len(path)] == path]:
            del self.origins[known]


def _set(origin: Origin, at: KeyPath, node: Any, key: Key, value: Any) -> None:
    if isinstance(key, int):
        if not isinstance(node, list) or key > len(node):
            count = len(node) if isinstance(node, list) else 0
            raise ConfigError(
                f"{origin.name}: {dotted(at)} has {count} entr{'y' if count == 1 else 'ies'}: "
                f"an index may name one of them, or the next ({count})"
            )
        if key == len(node):
            node.append(value)
        else:
            node[key] = value
    else:
        node[key] = value


def _field_type(annotation: Any, key: Key) -> Any:
    for arm in _arms(annotation):
        if _is_model(arm):
            found = arm.model_fields.get(key)
            return found.annotation if found is not None else Any
        if get_origin(arm) is dict:
            return get_args(arm)[1]
        if get_origin(arm) is tuple:
            return get_args(arm)[0]
    return Any


def _merge(old: Any, new: Any, annotation: Any) -> Any:
    """``new`` over ``old``: a mapping into a section or a mapping of entries key by key,
    anything else (a list, a value, a secret) replacing what was there."""
    arms = _arms(annotation)
    mergeable = Secret not in arms and any(_is_model(a) or get_origin(a) is dict for a in arms)
    if not (mergeable and isinstance(old, dict) and isinstance(new, dict)):
        return new
    merged = dict(old)
    for key, value in new.items():
        merged[key] = _merge(old.get(key), value, _field_type(annotation, key))
    return merged


def _paths(value: Any) -> Iterator[KeyPath]:
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        yield (key,)
        for below in _paths(item):
            yield (key, *below)


# Origins ----------------------------------------------------------------------------------


def _origin_of(origins: Mapping[KeyPath, Origin], path: KeyPath) -> Origin | None:
    if path in origins:
        return origins[path]
    below = sorted((p for p in origins if p[: len(path)] == path), key=str)
    if below:
        return origins[below[0]]
    for depth in range(len(path) - 1, 0, -1):
        if path[:depth] in origins:
            return origins[path[:depth]]
    return None


def _label(origins: Mapping[KeyPath, Origin], loc: KeyPath, fallback: str) -> str:
    origin = _origin_of(origins, loc) if loc else None
    return fallback if origin is None else origin.name
