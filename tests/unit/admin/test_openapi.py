"""The admin API's OpenAPI document: valid, complete, made from the table, and published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from bastion.admin.api import OPERATIONS, PREFIX, description
from bastion.admin.client import Answer
from bastion.admin.openapi import render
from bastion.cli import main
from tests.support.openapi import check_answer

PUBLISHED = Path(__file__).parents[3] / "docs" / "admin-openapi.json"
REGENERATE = "python -m bastion openapi > docs/admin-openapi.json"


def test_the_published_document_is_the_generated_one() -> None:
    assert PUBLISHED.read_text() == render(description()), (
        f"docs/admin-openapi.json is stale: regenerate it with `{REGENERATE}`"
    )


def test_bastion_openapi_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["openapi"]) == 0
    assert capsys.readouterr().out == render(description())


def test_it_is_a_valid_openapi_3_1_document() -> None:
    document = description()
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: the 3.1 schema, and every $ref resolves
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_operation_is_described_from_its_declaration() -> None:
    paths = description()["paths"]
    described = [(path, method) for path, item in paths.items() for method in item]
    assert sorted(described) == sorted((PREFIX + op.path, op.method.lower()) for op in OPERATIONS)
    for op in OPERATIONS:
        entry = paths[PREFIX + op.path][op.method.lower()]
        assert (entry["operationId"], entry["summary"]) == (op.name, op.summary)
        given = {(p["name"], p["in"], p["required"]) for p in entry.get("parameters", [])}
        assert given == {(p.name, p.where, p.required) for p in op.params if p.where != "body"}
        fields = entry.get("requestBody", {}).get("content", {}).get("application/json", {})
        body = fields.get("schema", {"properties": {}})
        assert list(body["properties"]) == [p.name for p in op.params if p.where == "body"]
        assert body.get("required", []) == [p.name for p in op.params if p.required and
                                            p.where == "body"]  # fmt: skip
        statuses = [int(s) for s in entry["responses"]]
        assert statuses == [op.status, *op.refusals], op.name


def test_operations_naming_an_object_or_writing_may_be_refused_so() -> None:
    by_name = {op.name: op for op in OPERATIONS}
    assert 404 in by_name["users.show"].refusals and 409 not in by_name["users.show"].refusals
    assert 409 in by_name["users.create"].refusals and 404 not in by_name["users.create"].refusals
    assert {404, 422} <= set(by_name["reload"].refusals)
    assert by_name["whoami"].refusals == (400, 401, 403, 408, 413, 429, 503)


def test_the_body_of_a_refusal_carries_its_errors_type() -> None:
    responses = description()["components"]["responses"]
    typed = {
        name: r["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]
        for name, r in responses.items()
    }
    assert typed["Unauthorized"]["properties"]["type"] == {"const": "authentication_error"}
    assert typed["TooManyRequests"]["properties"]["type"] == {"const": "rate_limit_error"}
    assert "Retry-After" in responses["TooManyRequests"]["headers"]


def test_optional_body_fields_may_be_null_and_carry_their_default() -> None:
    fields = description()["paths"][PREFIX + "/users"]["post"]["requestBody"]
    schema = fields["content"]["application/json"]["schema"]
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"name": "ann", "role": None, "kind": "service"})
    assert not validator.is_valid({"role": "user"})  # name is required
    assert not validator.is_valid({"name": "ann", "kind": "robot"})
    assert not validator.is_valid({"name": "a\x00"})
    assert schema["properties"]["role"]["default"] == "user"


# -- the checker the integration tests hold real answers with --------------------------------

WHOAMI = {"principal": "root", "credential": "key_1"}


def answer(status: int, body: Any, cache: str = "no-store") -> Answer:
    return Answer(status, {"content-type": "application/json", "cache-control": cache}, body)


def error(kind: str) -> dict[str, Any]:
    return {"error": {"message": "m", "type": kind, "param": None, "code": None}}


def test_the_checker_accepts_what_the_document_describes() -> None:
    check_answer(description(), "GET", "/admin/v1/whoami", answer(200, WHOAMI))
    check_answer(description(), "GET", "/admin/v1/whoami", answer(403, error("permission_error")))


@pytest.mark.parametrize(
    "wrong",
    [
        answer(200, {**WHOAMI, "extra": 1}),  # a field the shape does not name
        answer(200, {"principal": "root"}),  # a field missing
        answer(200, WHOAMI, cache="max-age=60"),  # cacheable
        answer(201, WHOAMI),  # a status the operation does not answer
        answer(404, error("invalid_request_error")),  # whoami names no object
        answer(400, error("server_error")),  # the wrong error type for the status
        answer(400, {"error": "bad"}),  # not the error shape
    ],
)
def test_the_checker_refuses_what_the_document_does_not_describe(wrong: Answer) -> None:
    with pytest.raises(AssertionError):
        check_answer(description(), "GET", "/admin/v1/whoami", wrong)
