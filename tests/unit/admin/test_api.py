"""The table of admin operations, driven in-process through ``AdminApi.handle``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from bastion.admin.api import OPERATIONS, ROUTER, AdminApi
from bastion.admin.overview import Overview
from bastion.admin.service import AdminService, Caller
from bastion.errors import MethodNotAllowedError, NotFoundError
from bastion.pipeline.route import ModelRegistry
from bastion.policy.policy import Policy
from bastion.server.reload import ReloadReport
from bastion.settings import (
    EjectionSettings,
    LimitSettings,
    LimitsSettings,
    ModelSettings,
    Settings,
    UpstreamTarget,
)
from bastion.store.store import Store
from bastion.store.usage import UsageLedger, UsageRecord
from bastion.upstream.balancer import UpstreamSet

LOCAL = Caller.local("local:ops")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path}/s.db")
    yield opened
    opened.close()


@pytest.fixture
def api(store: Store) -> AdminApi:
    async def reload() -> ReloadReport:
        return ReloadReport("bastion.yaml", ("m",), ("server.port",))

    model = ModelSettings(name="m", upstreams=(UpstreamTarget(url="http://127.0.0.1:9"),))
    registry = ModelRegistry((model,), UpstreamSet(EjectionSettings()), "/health")
    limits = LimitsSettings(per_user=LimitSettings(tokens_per_day=16, requests_per_minute=5))
    overview = Overview(registry, limits, checked=False)
    return AdminApi(AdminService(store, Policy(Settings())), None, reload, overview=overview)


class Driver:
    """Performs operations by name, as the CLI does: the operation builds the request."""

    def __init__(self, api: AdminApi) -> None:
        self.api = api
        self.done: set[str] = set()

    async def __call__(self, operation_name: str, /, **values: Any) -> Any:
        operation = ROUTER.by_name[operation_name]
        request = operation.request(values)
        status, answer = await self.api.handle(
            LOCAL, request.method, request.path.encode(), request.query.encode(), request.body
        )
        assert status == operation.status
        # validating drops what the shape does not name: an answer equal to its validated
        # self has exactly the shape's fields, of the shape's types
        assert TypeAdapter(operation.returns).validate_python(answer, strict=True) == answer
        self.done.add(operation_name)
        return answer


async def test_every_operation_answers_in_its_declared_shape(api: AdminApi, store: Store) -> None:
    UsageLedger(store).append(
        [UsageRecord(1.8e9, "r", "bob", "key_b", ("ml",), "m", "chat", 200, 5, 3, 10.0, 1.0)]
    )
    do = Driver(api)
    assert (await do("whoami"))["principal"] is None  # the local operator
    assert "admin" in {r["name"] for r in (await do("roles.list"))["data"]}
    await do("users.create", name="bob", kind="service", description="CI")
    await do("users.update", name="bob", disabled=True)
    assert (await do("users.show", name="bob"))["disabled"] is True
    assert [u["name"] for u in (await do("users.list"))["data"]] == ["bob"]
    await do("teams.create", name="ml")
    assert (await do("teams.add", team="ml", user="bob"))["members"] == ["bob"]
    assert (await do("teams.show", name="ml"))["members"] == ["bob"]
    assert (await do("teams.remove", team="ml", user="bob"))["members"] == []
    assert len((await do("teams.list"))["data"]) == 1
    issued = await do("keys.create", user="bob", models=["m"], expires_in=60)
    key_id = issued["key"]["id"]
    assert (await do("keys.show", id=key_id))["models"] == ["m"]
    rotated = await do("keys.rotate", id=key_id, overlap=0)
    assert (await do("keys.revoke", id=rotated["key"]["id"]))["state"] == "revoked"
    assert (await do("keys.list", user="bob", include_revoked=True))["data"]
    assert (await do("audit", action="key.", limit=2))["data"][0]["action"] == "key.revoke"
    [row] = (await do("usage", by="user,model", period="all"))["data"]
    assert (row["user"], row["model"], row["total_tokens"]) == ("bob", "m", 8)
    assert (await do("reload"))["restart_required"] == ["server.port"]
    [model] = (await do("upstreams"))["data"]
    assert (model["model"], model["healthy"], model["total"]) == ("m", 1, 1)
    assert model["upstreams"][0]["name"] == "127.0.0.1:9"
    limits = await do("limits")
    assert limits["buckets"] == [
        {"scope": "per_user", "name": None,
         "limits": {"count": "total", "requests_per_minute": 5, "tokens_per_day": 16}},
    ]  # fmt: skip
    assert [(n["name"], n["budget"], n["fraction"]) for n in limits["nearest"]] == [
        ("bob", "tokens_per_day", 0.5)
    ]
    assert await do("teams.delete", name="ml") == {"name": "ml", "deleted": True}
    assert await do("users.delete", name="bob") == {"name": "bob", "deleted": True}
    assert (await do("openapi"))["paths"]["/admin/v1/users/{name}"]["patch"]["operationId"] == (
        "users.update"
    )
    assert do.done == {op.name for op in OPERATIONS}


def test_the_table_is_consistent() -> None:
    assert len({op.name for op in OPERATIONS}) == len(OPERATIONS)
    assert len({(op.method, op.path) for op in OPERATIONS}) == len(OPERATIONS)
    for op in OPERATIONS:
        placeholders = re.findall(r"\{(\w+)\}", op.path)
        assert placeholders == [p.name for p in op.params if p.where == "path"], op.name
        assert len({p.name for p in op.params}) == len(op.params), op.name
        assert op.returns is not None and op.summary, op.name
        # the console permission (a read-only viewer) gets only operations that read
        assert op.permission == "admin" or (op.method == "GET" and not op.writes), op.name
    viewer_ops = {op.name for op in OPERATIONS if op.permission == "console"}
    assert viewer_ops == {"whoami", "usage", "upstreams", "limits"}


@pytest.mark.parametrize("name", ["bob", "a.b@c+d-e", "x_1"])
def test_a_request_routes_back_to_its_operation(name: str) -> None:
    for op in OPERATIONS:
        values = {p.name: name for p in op.params if p.where == "path"}
        request = op.request(values)
        found, in_path = ROUTER.find(op.method, request.path.encode())
        assert (found.name, in_path) == (op.name, values)


def test_unknown_paths_and_methods_are_refused() -> None:
    with pytest.raises(NotFoundError):
        ROUTER.find("GET", b"/admin/v1/nothing-here")
    with pytest.raises(NotFoundError):
        ROUTER.find("GET", b"/admin/v1/users/bob/keys")
    with pytest.raises(MethodNotAllowedError) as refused:
        ROUTER.find("PATCH", b"/admin/v1/keys")
    assert refused.value.headers == ((b"allow", b"GET, POST"),)
    with pytest.raises(MethodNotAllowedError) as refused:
        ROUTER.find("POST", b"/admin/v1/teams/ml/members/bob")
    assert refused.value.headers == ((b"allow", b"DELETE, PUT"),)
