"""The admin API's operations as the console's pages call them, made from its OpenAPI document.

The pages name operations (``keys.revoke``), never URLs: ``static/operations.json`` gives each
operation id its method, its path and where each of its parameters goes (path, query or
body), and ``static/api.js`` builds every request from it, as the CLI's client builds its
requests from the same table (:data:`bastion.admin.api.OPERATIONS`). The file is made by this
module, and a test fails when the committed one differs from what the code makes; regenerate
it with ``python -m bastion.console.operations > bastion/console/static/operations.json``.
"""

from __future__ import annotations

import json
from typing import Any

from bastion.admin.api import description

__all__ = ["document", "table"]

_METHODS = ("get", "put", "post", "patch", "delete")


def table(openapi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{operation id: {method, path, query: [...], body: [...]}}`` from an OpenAPI document
    (the path's own parameters are its ``{name}`` parts)."""
    found: dict[str, dict[str, Any]] = {}
    for path, item in openapi["paths"].items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            parameters = operation.get("parameters", [])
            content = operation.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema", {})
            found[operation["operationId"]] = {
                "method": method.upper(),
                "path": path,
                "query": [p["name"] for p in parameters if p["in"] == "query"],
                "body": list(schema.get("properties", {})),
            }
    return found


def document() -> str:
    """The text of ``static/operations.json``."""
    return json.dumps(table(description()), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(document(), end="")
