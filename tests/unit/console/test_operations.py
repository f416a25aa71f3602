"""``static/operations.json``: the admin operations as the console's pages call them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bastion.admin.api import OPERATIONS
from bastion.console.operations import document, table

STATIC = Path(__file__).resolve().parents[3] / "bastion" / "console" / "static"
REGENERATE = "python -m bastion.console.operations > bastion/console/static/operations.json"
CALLED = re.compile(r"\bcall\('([a-z.]+)'")


def test_the_shipped_table_is_the_codes() -> None:
    shipped = (STATIC / "operations.json").read_text()
    assert shipped == document(), f"operations.json is stale: regenerate it with `{REGENERATE}`"


def test_the_table_has_every_operation_with_its_parameters() -> None:
    ops = json.loads(document())
    assert set(ops) == {op.name for op in OPERATIONS}
    assert ops["keys.rotate"] == {
        "method": "POST",
        "path": "/admin/v1/keys/{id}/rotate",
        "query": [],
        "body": ["overlap"],
    }
    assert ops["keys.list"]["query"] == ["user", "include_revoked"]
    assert ops["teams.add"]["path"] == "/admin/v1/teams/{team}/members/{user}"


def test_every_operation_the_pages_call_exists() -> None:
    called = {name for script in STATIC.glob("*.js") for name in CALLED.findall(script.read_text())}
    assert len(called) >= 15  # the finder finds them: users.*, teams.*, keys.*, usage...
    assert called - set(json.loads(document())) == set()


def test_a_document_without_a_body_or_parameters_makes_empty_lists() -> None:
    made = table({"paths": {"/x": {"get": {"operationId": "x"}}}})
    assert made == {"x": {"method": "GET", "path": "/x", "query": [], "body": []}}
