"""The admin API described: an OpenAPI 3.1 document made from the table of operations.

Nothing here is written by hand about any one operation: :func:`document` reads each
:class:`~bastion.admin.operations.Operation` of the table (the one the API routes by and the
CLI builds its requests from) and writes its path, method, parameters with their JSON Schema
(:meth:`Kind.schema <bastion.admin.operations.Kind.schema>`), request body, answer (its shape of
:mod:`bastion.admin.shapes`, through pydantic) and the refusals it may answer
(:attr:`Operation.refusals <bastion.admin.operations.Operation.refusals>`, each an error of
:mod:`bastion.errors`). So the document cannot drift from the API; tests hold the API's real
answers to it.

The gateway serves it at ``GET /admin/v1/openapi.json`` (to administrators); ``bastion
openapi`` prints it, and ``docs/admin-openapi.json`` is that output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode

from bastion.admin import shapes
from bastion.admin.operations import PREFIX, Operation, Param
from bastion.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigRefusedError,
    ConflictError,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
)

__all__ = ["OPENAPI_VERSION", "document", "render"]

OPENAPI_VERSION = "3.1.0"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SCHEMAS = "#/components/schemas/"

# status -> (the error raised, the response's component name, what it means)
_REFUSALS: dict[int, tuple[type[GatewayError], str, str]] = {
    400: (BadRequestError, "BadRequest",
          "Invalid input: a body that is not a JSON object, a parameter missing, of the wrong "
          "type or out of its range (`param` names it), or a value the rules refuse (a name "
          "that breaks the naming rule, an unknown role)."),
    401: (AuthenticationError, "Unauthorized",
          "No credential, or one the gateway does not know, or an expired key."),
    403: (PermissionDeniedError, "Forbidden",
          "The caller's access lacks the `admin` permission (the `console` permission allows "
          "only the operations that say so), the operation would give more than the caller "
          "has (such refusals are written to the audit trail), or a console session's call "
          "lacks its `X-CSRF-Token` or comes from another site."),
    404: (NotFoundError, "NotFound", "No such user, team, key or membership."),
    408: (RequestTimeoutError, "RequestTimeout", "The body did not arrive in time."),
    409: (ConflictError, "Conflict",
          "It conflicts with what exists: a name already taken, a key that is not active."),
    413: (PayloadTooLargeError, "PayloadTooLarge", "The body is over `http.max_body_bytes`."),
    422: (ConfigRefusedError, "ConfigRefused",
          "The configuration file was refused (the message says why); the running "
          "configuration stays."),
    429: (RateLimitError, "TooManyRequests",
          "This address is blocked after too many failed authentications; retry after "
          "`Retry-After` seconds."),
    503: (ServiceUnavailableError, "Unavailable",
          "The identity store (or the identity provider) cannot be reached; retry later."),
}  # fmt: skip

_INFO = {
    "title": "Bastion admin API",
    "version": "v1",
    "description": (
        "Users, teams, roles, keys, the audit trail, usage reports and configuration reloads "
        "of a Bastion gateway. Every operation needs a credential whose access includes the "
        "`admin` permission (a few read-only ones the `console` permission as well), and "
        "gives nobody more than the caller has. Bodies are JSON; a "
        "body field given as `null`, or a query parameter given empty, counts as not given. "
        "Times are Unix times in seconds. A created or rotated key's secret appears once, in "
        "the answer that created it."
    ),
}

_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`bst_...`), or a JWT where the gateway accepts them.",
    },
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "A user of the gateway's htpasswd file, where it has one.",
    },
    "consoleSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "bastion_session",
        "description": (
            "A web console session (signed in at `/ui/`), without an `Authorization` header; "
            "every call must also carry the session's CSRF token in `X-CSRF-Token`."
        ),
    },
}


_NO_STORE = {
    "description": "Answers of the admin API are never cached.",
    "schema": {"const": "no-store"},
    "required": True,
}


class _Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema, named for a reader: ``UserList`` for ``ListOf[User]``, and no
    titles on fields (their names say it)."""

    def normalize_name(self, name: str) -> str:
        listed = re.fullmatch(r"ListOf\[(\w+)\]", name)
        return f"{listed.group(1)}List" if listed else super().normalize_name(name)

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: JsonSchemaMode = "validation") -> Any:
        return _markdown(super().generate(schema, mode))

    def generate_definitions(self, inputs: Any) -> Any:
        refs, defs = super().generate_definitions(inputs)
        return refs, _markdown(defs)


def _markdown(value: Any) -> Any:
    """Docstrings as descriptions: one line each, ````code```` as Markdown's ```code```."""
    if isinstance(value, dict):
        return {
            k: " ".join(v.replace("``", "`").split())
            if k == "description" and isinstance(v, str)
            else _markdown(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_markdown(v) for v in value]
    return value


def document(operations: Sequence[Operation[Any]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations`` (a plain JSON value)."""
    shapes_of, schemas = _components([op.returns for op in operations] + [shapes.Error])
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(PREFIX + op.path, {})[op.method.lower()] = _operation(op, shapes_of)
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": _DIALECT,
        "info": _INFO,
        "tags": [{"name": tag} for tag in dict.fromkeys(_tag(op) for op in operations)],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": _refusal_responses(shapes_of[shapes.Error]),
            "headers": {"NoStore": _NO_STORE},
            "securitySchemes": _SECURITY_SCHEMES,
        },
        "security": [{"bearer": []}, {"basic": []}, {"consoleSession": []}],
    }


def render(described: dict[str, Any]) -> str:
    """The document as the file ``docs/admin-openapi.json`` holds it."""
    return json.dumps(described, indent=2, ensure_ascii=False) + "\n"


def _components(types: list[Any]) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """Each answer type's schema (a reference), and the named schemas they refer to."""
    unique = list(dict.fromkeys(types))
    mode: JsonSchemaMode = "serialization"
    refs, defs = TypeAdapter.json_schemas(
        [(t, mode, TypeAdapter(t)) for t in unique],
        ref_template=_SCHEMAS + "{model}",
        schema_generator=_Schemas,
    )
    return {t: refs[(t, mode)] for t in unique}, defs.get("$defs", {})


def _operation(op: Operation[Any], shapes_of: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    described: dict[str, Any] = {
        "operationId": op.name,
        "tags": [_tag(op)],
        "summary": op.summary,
        "description": _description(op),
    }
    parameters = [_parameter(p) for p in op.params if p.where != "body"]
    if parameters:
        described["parameters"] = parameters
    fields = [p for p in op.params if p.where == "body"]
    if fields:
        described["requestBody"] = _request_body(fields)
    answer = {
        "description": "Created" if op.status == 201 else "OK",
        "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
        "content": {"application/json": {"schema": shapes_of[op.returns]}},
    }
    responses: dict[str, Any] = {str(op.status): answer}
    for status in op.refusals:
        responses[str(status)] = {"$ref": f"#/components/responses/{_REFUSALS[status][1]}"}
    described["responses"] = responses
    return described


def _tag(op: Operation[Any]) -> str:
    return op.name.split(".", 1)[0]


def _description(op: Operation[Any]) -> str:
    text = (
        "Needs the `admin` permission."
        if op.permission == "admin"
        else f"Needs the `admin` or the `{op.permission}` permission."
    )
    if op.writes:
        text += (
            " Changes the store, and writes the change to the audit trail; this gateway "
            "applies it at once, other replicas within their store poll interval."
        )
    return text


def _parameter(param: Param) -> dict[str, Any]:
    """A path or query parameter."""
    schema = param.kind.schema()
    if param.default is not None:
        schema["default"] = _json_default(param)
    described: dict[str, Any] = {"name": param.name, "in": param.where}
    described["required"] = param.required
    if param.where == "query":
        described["allowEmptyValue"] = True  # given empty, it is not given: the default applies
    if param.doc:
        described["description"] = param.doc
    described["schema"] = schema
    return described


def _request_body(fields: list[Param]) -> dict[str, Any]:
    """A JSON object of the body parameters; one not required may be ``null`` (not given)."""
    properties: dict[str, Any] = {}
    for field in fields:
        schema = field.kind.schema()
        if not field.required:
            schema = {"anyOf": [schema, {"type": "null"}]}
            if field.default is not None:
                schema["default"] = _json_default(field)
        if field.doc:
            schema["description"] = field.doc
        properties[field.name] = schema
    required = [f.name for f in fields if f.required]
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


def _json_default(param: Param) -> Any:
    """The default as a request would give it (a list of words in a query: its text)."""
    default = param.default
    return param.kind.to_text(default) if isinstance(default, tuple) else default


def _refusal_responses(error_schema: dict[str, Any]) -> dict[str, Any]:
    """One response per refusal status: the error shape, with that status's error type."""
    responses: dict[str, Any] = {}
    for status, (error, name, meaning) in _REFUSALS.items():
        typed = {"properties": {"error": {"properties": {"type": {"const": error.type}}}}}
        response: dict[str, Any] = {
            "description": meaning,
            "content": {"application/json": {"schema": {"allOf": [error_schema, typed]}}},
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {"schema": {"type": "integer", "minimum": 0}, "required": True}
            }
        responses[name] = response
    return responses
