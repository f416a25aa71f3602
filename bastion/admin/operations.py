"""How an admin operation is declared: one :class:`Operation` each, in one table.

The table itself is :data:`bastion.admin.api.OPERATIONS`. Each entry names the operation (the
name is also the CLI's command: ``users.create``), its HTTP method and path template, its
parameters and their kinds, the permission it needs, the shape of its answer and its handler.
That one declaration drives:

- the admin API: :class:`Router` finds the operation of a request, and
  :meth:`Operation.arguments` turns its path, query string and JSON body into checked values;
- the CLI: :meth:`Operation.request` turns the values of a command line into the very HTTP
  request the API parses, which the CLI either sends to a gateway or hands to the API
  in-process, so the local and remote commands cannot drift apart;
- the OpenAPI document (:mod:`bastion.admin.openapi`): each :class:`Kind` gives its JSON
  Schema, each answer's shape is a ``TypedDict`` of :mod:`bastion.admin.shapes`, and
  :attr:`Operation.refusals` lists the error statuses it may answer.

A parameter's kind checks and converts its values: from JSON (a body field), from text (a path
segment or a query parameter) and back to text (the CLI writing a query string). The checks are
whole, so that no value reaches the service or the database that either would choke on: text
is bounded and holds no NUL (PostgreSQL refuses it), numbers are finite and within the range
their declaration gives, enumerations and lists of them hold known words, once each. A refusal
is a 400 naming the parameter.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from bastion.errors import BadRequestError, MethodNotAllowedError, NotFoundError
from bastion.pipeline.endpoints import canonical_path

__all__ = [
    "PREFIX",
    "REFUSALS",
    "Choice",
    "Choices",
    "Flag",
    "Integer",
    "Kind",
    "Number",
    "Operation",
    "Param",
    "Request",
    "Router",
    "Strings",
    "Text",
    "body",
    "path",
    "query",
]

PREFIX = "/admin/v1"
REFUSALS = (400, 401, 403, 408, 413, 429, 503)
"""What any admin request may be refused with, whatever its operation: a body that is not a
JSON object or a bad parameter (400), no or an unknown credential (401), no ``admin``
permission or an operation wider than the caller (403), a body too slow (408) or too large
(413), an address blocked after failed logins (429), a store or identity provider that is
away (503)."""
_NO_NUL = "^[^\\x00]*$"
"""The JSON Schema pattern of text without a NUL character."""

C = TypeVar("C")
Where = Literal["path", "query", "body"]
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


# -- kinds of values ----------------------------------------------------------------------------


class Kind:
    """How the values of one parameter are checked and converted (a subclass per kind)."""

    def from_json(self, value: Any, name: str) -> Any:
        raise NotImplementedError

    def from_text(self, text: str, name: str) -> Any:
        """A value from a path segment or a query parameter (text, never empty)."""
        return self.from_json(text, name)

    def to_text(self, value: Any) -> str:
        return str(value)

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the values (for an OpenAPI description)."""
        raise NotImplementedError


def _text(value: Any, name: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise BadRequestError(f"'{name}' must be a string.", param=name)
    if len(value) > max_length:
        raise BadRequestError(f"'{name}' is at most {max_length} characters.", param=name)
    if "\x00" in value:
        raise BadRequestError(f"'{name}' must not contain a NUL character.", param=name)
    return value


@dataclass(frozen=True, slots=True)
class Text(Kind):
    max_length: int
    pattern: str | None = None
    """A regular expression the whole text must match (one Python and JSON Schema read alike)."""
    rule: str = ""
    """The pattern in words, for the refusal."""

    def from_json(self, value: Any, name: str) -> str:
        text = _text(value, name, self.max_length)
        if self.pattern is not None and re.fullmatch(self.pattern, text) is None:
            raise BadRequestError(f"'{name}' is {self.rule}.", param=name)
        return text

    def schema(self) -> dict[str, Any]:
        pattern = _NO_NUL if self.pattern is None else f"^(?:{self.pattern})$"
        return {"type": "string", "maxLength": self.max_length, "pattern": pattern}


@dataclass(frozen=True, slots=True)
class Choice(Kind):
    values: tuple[str, ...]

    def from_json(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or value not in self.values:
            raise BadRequestError(f"'{name}' is one of {', '.join(self.values)}.", param=name)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


@dataclass(frozen=True, slots=True)
class Number(Kind):
    """A finite number from ``minimum`` to ``maximum``."""

    minimum: float
    maximum: float

    def from_json(self, value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequestError(f"'{name}' must be a number.", param=name)
        number = float(value)
        if not (math.isfinite(number) and self.minimum <= number <= self.maximum):
            raise BadRequestError(
                f"'{name}' must be a number from {self.minimum:.15g} to {self.maximum:.15g}.",
                param=name,
            )
        return number

    def from_text(self, text: str, name: str) -> float:
        try:
            return self.from_json(float(text), name)
        except ValueError:
            raise BadRequestError(f"'{name}' must be a number.", param=name) from None

    def to_text(self, value: Any) -> str:
        return repr(float(value))

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True, slots=True)
class Integer(Kind):
    """A whole number from ``minimum`` to ``maximum``."""

    minimum: int
    maximum: int

    def from_json(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequestError(f"'{name}' must be an integer.", param=name)
        if not self.minimum <= value <= self.maximum:
            raise BadRequestError(
                f"'{name}' must be an integer from {self.minimum} to {self.maximum}.", param=name
            )
        return value

    def from_text(self, text: str, name: str) -> int:
        try:
            return self.from_json(int(text), name)
        except ValueError:
            raise BadRequestError(f"'{name}' must be an integer.", param=name) from None

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}


_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True, slots=True)
class Flag(Kind):
    def from_json(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise BadRequestError(f"'{name}' must be true or false.", param=name)
        return value

    def from_text(self, text: str, name: str) -> bool:
        word = text.lower()
        if word not in _WORDS:
            raise BadRequestError(f"'{name}' must be true or false.", param=name)
        return _WORDS[word]

    def to_text(self, value: Any) -> str:
        return "true" if value else "false"

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True, slots=True)
class Strings(Kind):
    """A list of strings (in a JSON body)."""

    max_items: int = 100
    max_length: int = 200

    def from_json(self, value: Any, name: str) -> list[str]:
        if (
            not isinstance(value, list)
            or len(value) > self.max_items
            or not all(isinstance(v, str) and 0 < len(v) <= self.max_length for v in value)
        ):
            raise BadRequestError(
                f"'{name}' must be a list of up to {self.max_items} strings of 1 to "
                f"{self.max_length} characters.",
                param=name,
            )
        if any("\x00" in v for v in value):
            raise BadRequestError(f"'{name}' must not contain a NUL character.", param=name)
        return value

    def schema(self) -> dict[str, Any]:
        item = {"type": "string", "minLength": 1, "maxLength": self.max_length, "pattern": _NO_NUL}
        return {"type": "array", "items": item, "maxItems": self.max_items}


@dataclass(frozen=True, slots=True)
class Choices(Kind):
    """Some of a few words, comma-separated in a query string (``by=user,model``)."""

    values: tuple[str, ...]

    def from_json(self, value: Any, name: str) -> tuple[str, ...]:
        if not isinstance(value, str):
            raise BadRequestError(f"'{name}' must be a string.", param=name)
        return self.from_text(value, name)

    def from_text(self, text: str, name: str) -> tuple[str, ...]:
        words = tuple(word for word in text.split(",") if word)
        if not words or not set(words) <= set(self.values) or len(set(words)) < len(words):
            raise BadRequestError(
                f"'{name}' names one or more of {', '.join(self.values)}, each once.", param=name
            )
        return words

    def to_text(self, value: Any) -> str:
        return value if isinstance(value, str) else ",".join(value)

    def schema(self) -> dict[str, Any]:
        words = "|".join(self.values)
        return {
            "type": "string",
            "pattern": f"^({words})(,({words}))*$",
            "description": f"one or more of {', '.join(self.values)}, comma-separated, each once",
        }


# -- parameters and operations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of an operation: where it is given, its kind, and what it means."""

    name: str
    kind: Kind
    where: Where = "body"
    required: bool = False
    default: Any = None
    doc: str = ""

    def read(self, given: Mapping[str, Any]) -> Any:
        """Its checked value from what the request gave; a missing value (absent, ``null``,
        or an empty query parameter) is the default."""
        value = given.get(self.name)
        if value is None or (value == "" and self.where == "query"):
            if self.required:
                raise BadRequestError(f"'{self.name}' is required.", param=self.name)
            return self.default
        if self.where == "body":
            return self.kind.from_json(value, self.name)
        return self.kind.from_text(value, self.name)


def path(name: str, kind: Kind, doc: str = "") -> Param:
    return Param(name, kind, "path", required=True, doc=doc)


def query(name: str, kind: Kind, default: Any = None, doc: str = "") -> Param:
    return Param(name, kind, "query", default=default, doc=doc)


def body(
    name: str, kind: Kind, *, required: bool = False, default: Any = None, doc: str = ""
) -> Param:
    return Param(name, kind, "body", required=required, default=default, doc=doc)


@dataclass(frozen=True, slots=True)
class Request:
    """An admin request as it goes over HTTP: what the CLI sends, or hands to the API
    in-process. ``path`` starts with :data:`PREFIX`; ``query`` is URL-encoded."""

    method: str
    path: str
    query: str = ""
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Operation(Generic[C]):
    """One admin operation. ``handler`` gets the API's call (the service, the caller and the
    checked arguments) and returns the JSON answer; it runs in a worker thread unless
    ``blocking`` is false (then it is a coroutine function, run on the event loop)."""

    name: str
    method: str
    path: str
    """A template: ``/users/{name}``."""
    handler: Callable[[C], Any]
    summary: str
    params: tuple[Param, ...] = ()
    returns: Any = None
    """The answer's shape: a ``TypedDict`` of :mod:`bastion.admin.shapes`."""
    status: int = 200
    errors: tuple[int, ...] = ()
    """Error statuses of its own, beyond those :attr:`refusals` implies (404 for an object
    named in the body or the query, 422)."""
    permission: str = "admin"
    writes: bool = False
    """It changes the store: the gateway reloads its keys at once."""
    blocking: bool = True
    segments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(s for s in self.path.split("/") if s))

    @property
    def refusals(self) -> tuple[int, ...]:
        """The error statuses it may answer, in order: those of every request
        (:data:`REFUSALS`), 404 when its path names an object, 409 when it writes (the
        store refuses what conflicts with what exists), and its own :attr:`errors`."""
        found = set(REFUSALS) | set(self.errors)
        if any(p.where == "path" for p in self.params):
            found.add(404)
        if self.writes:
            found.add(409)
        return tuple(sorted(found))

    def arguments(
        self, in_path: Mapping[str, str], in_query: Mapping[str, str], in_body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Every parameter's checked value (or its default), by name."""
        given = {"path": in_path, "query": in_query, "body": in_body}
        return {p.name: p.read(given[p.where]) for p in self.params}

    def request(self, values: Mapping[str, Any]) -> Request:
        """The HTTP request that performs this operation with ``values`` (None: not given)."""
        kept = {p.name: (p, values[p.name]) for p in self.params if values.get(p.name) is not None}
        segments = [
            urllib.parse.quote(str(values[m.group(1)]), safe="")
            if (m := _PLACEHOLDER.fullmatch(s))
            else s
            for s in self.segments
        ]
        pairs = [(n, p.kind.to_text(v)) for n, (p, v) in kept.items() if p.where == "query"]
        fields = {n: v for n, (p, v) in kept.items() if p.where == "body"}
        content = b""
        if any(p.where == "body" for p in self.params):
            content = json.dumps(fields).encode()
        return Request(
            self.method, "/".join((PREFIX, *segments)), urllib.parse.urlencode(pairs), content
        )

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The path parameters if ``segments`` fit this operation's path, else None."""
        if len(segments) != len(self.segments):
            return None
        found: dict[str, str] = {}
        for template, segment in zip(self.segments, segments, strict=True):
            placeholder = _PLACEHOLDER.fullmatch(template)
            if placeholder is not None:
                found[placeholder.group(1)] = segment
            elif template != segment:
                return None
        return found


class Router(Generic[C]):
    """Finds the operation of a request from its method and raw path (404 and 405 if none)."""

    def __init__(self, operations: Sequence[Operation[C]]) -> None:
        self._operations = tuple(operations)
        self.by_name = {op.name: op for op in operations}

    def find(self, method: str, raw_path: bytes) -> tuple[Operation[C], dict[str, str]]:
        text = canonical_path(raw_path) or ""
        segments = [s for s in text.removeprefix(PREFIX).split("/") if s]
        matched = [
            (op, found) for op in self._operations if (found := op.match(segments)) is not None
        ]
        for op, found in matched:
            if op.method == method:
                return op, found
        if not matched:
            raise NotFoundError()
        allowed = ", ".join(sorted({op.method for op, _ in matched}))
        raise MethodNotAllowedError(headers=((b"allow", allowed.encode()),))
