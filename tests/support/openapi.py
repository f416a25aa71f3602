"""Holding the admin API's real answers to its OpenAPI document."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from bastion.admin.api import PREFIX, ROUTER
from bastion.admin.client import AdminClient, Answer
from bastion.admin.operations import Request


def response_of(document: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    """The described response of the operation that ``method`` and ``path`` reach, for
    ``status`` (its ``$ref`` followed); AssertionError if the document lists no such status."""
    operation, _ = ROUTER.find(method, path.encode())
    described = document["paths"][PREFIX + operation.path][method.lower()]
    response = described["responses"].get(str(status))
    assert response is not None, f"{operation.name} answered {status}: not in the document"
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return dict(response)


def check_answer(document: dict[str, Any], method: str, path: str, answer: Answer) -> None:
    """The answer's status is one the operation's description lists, and its body and headers
    are what that response describes (JSON Schema draft 2020-12, as OpenAPI 3.1 uses)."""
    response = response_of(document, method, path, answer.status)
    assert answer.headers.get("content-type") == "application/json", answer.headers
    schema = response["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": document["components"]})
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(answer.body)]
    assert errors == [], (method, path, answer.status, errors)
    for name, header in response.get("headers", {}).items():
        if "$ref" in header:
            header = document["components"]["headers"][header["$ref"].rsplit("/", 1)[1]]
        value = answer.headers.get(name.lower())
        assert value is not None or not header.get("required"), (name, answer.headers)
        if value is not None:
            typed: Any = int(value) if header["schema"].get("type") == "integer" else value
            assert Draft202012Validator(header["schema"]).is_valid(typed), (name, value)


class Conformance:
    """Performs admin operations through :class:`AdminClient` (the CLI's client), checks each
    status and holds each answer to the document; remembers which (operation, status) pairs
    it has seen."""

    def __init__(self, client: AdminClient, document: dict[str, Any]) -> None:
        self.client = client
        self.document = document
        self.seen: set[tuple[str, int]] = set()

    def __call__(self, status: int, operation: str, /, **values: Any) -> Any:
        return self.send(status, ROUTER.by_name[operation].request(values))

    def send(self, status: int, request: Request, client: AdminClient | None = None) -> Any:
        """Send ``request`` (by ``client``: another caller), expect ``status``; the body."""
        answer = (client or self.client).exchange(request)
        assert answer.status == status, (request.method, request.path, answer.body)
        self.check(request.method, request.path, answer)
        return answer.body

    def check(self, method: str, path: str, answer: Answer) -> None:
        check_answer(self.document, method, path, answer)
        operation, _ = ROUTER.find(method, path.encode())
        self.seen.add((operation.name, answer.status))
