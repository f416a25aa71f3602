"""The admin API's OpenAPI document against a running gateway, on SQLite and PostgreSQL.

Every operation of the table is performed through :class:`AdminClient` (the CLI's client),
and every answer, success or refusal, is held to the document the gateway serves: its status
must be one the operation's description lists, its body must validate against that response's
schema (JSON Schema draft 2020-12) and its headers must be the described ones. The test counts
what it saw: every operation, and every refusal status the document lists.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import pytest
import yaml

from bastion.admin.api import OPERATIONS, ROUTER, description
from bastion.admin.client import AdminClient, Answer
from bastion.admin.openapi import render
from bastion.admin.operations import REFUSALS, Request
from bastion.cli import main
from bastion.errors import RemoteError
from tests.support.admin import STORES
from tests.support.clients import openai_client
from tests.support.databases import reset_postgres
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.support.openapi import Conformance
from tests.support.pgproxy import PgProxy

KEYS = Keys()
MAX_BODY = 65_536
BLOCK = 1.0
"""Seconds an address stays blocked after MAX_FAILURES failed logins."""
MAX_FAILURES = 3


class Setup:
    def __init__(self, gateway: GatewayProcess, proxy: PgProxy | None) -> None:
        self.gateway = gateway
        self.proxy = proxy
        self.config = gateway.workdir / "bastion.yaml"


@pytest.fixture(scope="module", params=STORES)
def setup(
    request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    config = base_config(upstream.url, KEYS)
    config["auth"]["brute_force"] = {"max_failures": MAX_FAILURES, "block": BLOCK}
    config["http"] = {"max_body_bytes": MAX_BODY, "request_body_timeout": 0.5}
    config["usage"] = {"prices": {"test-model": {"input": 1.0, "output": 2.0}}}
    config["limits"] = {"per_user": {"tokens_per_day": 1_000_000, "cost_per_month": 100.0}}
    config["store"] = {"poll_interval": 0.2, "connect_timeout": 2, "statement_timeout": 2}
    proxy = None
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        reset_postgres(url)
        proxy = PgProxy()
        config["store"]["url"] = proxy.url(url)
    try:
        with running_gateway(config, tmp_path_factory.mktemp("openapi"), "k") as process:
            yield Setup(process, proxy)
    finally:
        if proxy is not None:
            proxy.close()


@pytest.fixture
def check(setup: Setup) -> Conformance:
    return Conformance(AdminClient(setup.gateway.url, KEYS.admin), description())


def eventually(probe: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)
    return found


def status_of(client: AdminClient, operation: str) -> int:
    return client.exchange(ROUTER.by_name[operation].request({})).status


def test_the_gateway_serves_the_generated_document(setup: Setup, check: Conformance) -> None:
    served = check(200, "openapi")
    assert served == description()
    committed = Path(__file__).parents[2] / "docs" / "admin-openapi.json"
    assert json.loads(committed.read_text()) == served


def test_bastion_openapi_prints_what_a_gateway_serves(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BASTION_API_KEY", KEYS.admin)
    assert main(["openapi", "--url", setup.gateway.url]) == 0
    assert capsys.readouterr().out == render(description())
    monkeypatch.setenv("BASTION_API_KEY", KEYS.user)
    assert main(["openapi", "--url", setup.gateway.url]) == 2
    assert "403: " in capsys.readouterr().err


def test_only_administrators_read_the_document(setup: Setup, check: Conformance) -> None:
    request = ROUTER.by_name["openapi"].request({})
    as_user = AdminClient(setup.gateway.url, KEYS.user)
    assert check.send(403, request, as_user)["error"]["type"] == "permission_error"
    with pytest.raises(RemoteError, match=r"^403: "):
        as_user.call("openapi")
    anonymous = AdminClient(setup.gateway.url, "")
    assert check.send(401, request, anonymous)["error"]["type"] == "authentication_error"


def test_every_operation_answers_as_described(setup: Setup, check: Conformance) -> None:
    assert check(200, "whoami")["principal"] == "root"
    assert "admin" in {r["name"] for r in check(200, "roles.list")["data"]}
    _users(check)
    _teams(check)
    key_id, secret = _keys(check)
    _usage(setup, check, key_id, secret)
    trail = check(200, "audit", action="key.", outcome="ok", limit=3, since=0)["data"]
    assert [e["action"] for e in trail] == ["key.create", "key.revoke", "key.rotate"]
    assert check(200, "audit", actor="root", until=time.time() + 60)["data"]
    _reload(setup, check)
    check(200, "openapi")
    assert check(200, "users.delete", name="ann") == {"name": "ann", "deleted": True}
    assert {op.name for op in OPERATIONS} <= {name for name, _ in check.seen}
    assert {(op.name, op.status) for op in OPERATIONS} <= check.seen
    assert {400, 404, 409, 422} <= {status for _, status in check.seen}


def _users(check: Conformance) -> None:
    created = check(201, "users.create", name="ann", role="user", description="Ann")
    assert (created["name"], created["kind"]) == ("ann", "user")
    check(201, "users.create", name="svc", kind="service")
    check(409, "users.create", name="ann")
    check(400, "users.create", name="not a name")
    check(400, "users.create", name="bo", role="no-such-role")
    assert check(200, "users.update", name="svc", disabled=True)["disabled"] is True
    assert check(200, "users.show", name="svc")["kind"] == "service"
    check(404, "users.show", name="nobody")
    check(404, "users.update", name="nobody", description="x")
    assert {"ann", "svc"} <= {u["name"] for u in check(200, "users.list")["data"]}
    check(200, "users.delete", name="svc")
    check(404, "users.delete", name="svc")


def _teams(check: Conformance) -> None:
    assert check(201, "teams.create", name="ml", description="research")["members"] == []
    check(409, "teams.create", name="ml")
    assert check(200, "teams.add", team="ml", user="ann")["members"] == ["ann"]
    check(404, "teams.add", team="ml", user="nobody")
    assert check(200, "teams.show", name="ml")["members"] == ["ann"]
    assert [t["name"] for t in check(200, "teams.list")["data"]] == ["ml"]
    assert check(200, "teams.remove", team="ml", user="ann")["members"] == []
    check(404, "teams.remove", team="ml", user="ann")
    check(201, "teams.create", name="gone")
    check(200, "teams.delete", name="gone")
    check(404, "teams.show", name="gone")
    check(200, "teams.add", team="ml", user="ann")  # ann's usage is counted for ml


def _keys(check: Conformance) -> tuple[str, str]:
    """Keys issued, listed, rotated and revoked; the id and secret of a key left working."""
    issued = check(
        201, "keys.create", user="ann", name="laptop", models=["test-model"], routes=["chat"],
        networks=["127.0.0.1/32"], expires_in=3600,
    )  # fmt: skip
    key_id = issued["key"]["id"]
    assert issued["secret"].startswith("bst_")
    check(404, "keys.create", user="nobody")
    check(400, "keys.create", user="ann", expires_at=1.0, expires_in=5)
    check(400, "keys.create", user="ann", routes=["no-such-permission"])
    assert check(200, "keys.show", id=key_id)["models"] == ["test-model"]
    check(404, "keys.show", id="key_nothing")
    rotated = check(201, "keys.rotate", id=key_id, overlap=0)
    assert rotated["key"]["rotated_from"] == key_id
    check(409, "keys.rotate", id=key_id)  # revoked by the rotation
    assert check(200, "keys.revoke", id=rotated["key"]["id"])["state"] == "revoked"
    listed = check(200, "keys.list", user="ann", include_revoked=True)["data"]
    assert {k["state"] for k in listed} == {"revoked"}
    check(404, "keys.list", user="nobody")
    working = check(201, "keys.create", user="ann")
    return working["key"]["id"], working["secret"]


def _usage(setup: Setup, check: Conformance, key_id: str, secret: str) -> None:
    """A chat with ann's key, then the usage reports that count it."""
    openai_client(setup.gateway.url, secret).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}]
    )
    rows = eventually(lambda: check(200, "usage", by="user,key,team,model", period="hour")["data"])
    assert (rows[0]["user"], rows[0]["key"], rows[0]["team"]) == ("ann", key_id, "ml")
    assert rows[0]["currency"] == "USD" and rows[0]["cost"] > 0
    check(200, "usage", period="all", user="ann", team="ml", model="test-model", since=0)
    check(400, "usage", by="user,user")
    [model] = check(200, "upstreams")["data"]
    assert (model["model"], model["total"]) == ("test-model", 1)
    limits = check(200, "limits")
    assert [b["scope"] for b in limits["buckets"]] == ["per_user"]
    near = {(n["bucket"], n["name"], n["budget"]): n for n in limits["nearest"]}
    assert near[("user", "ann", "tokens_per_day")]["used"] == rows[0]["total_tokens"]
    assert 0 < near[("user", "ann", "cost_per_month")]["fraction"] < 1


def _reload(setup: Setup, check: Conformance) -> None:
    good = setup.config.read_text()
    assert check(200, "reload")["models"] == ["test-model"]
    broken = yaml.safe_load(good)
    broken["models"] = "none"
    setup.config.write_text(yaml.safe_dump(broken))
    try:
        refused = check(422, "reload")["error"]
        assert refused["code"] == "invalid_config"
    finally:
        setup.config.write_text(good)


def test_every_refusal_is_described(setup: Setup, check: Conformance) -> None:
    users = ROUTER.by_name["users.create"]
    check.send(400, Request("POST", users.request({}).path, "", b"[1, 2"))
    check.send(400, Request("GET", "/admin/v1/whoami", "", b'"not an object"'))
    check.send(413, users.request({"name": "x", "description": "x" * MAX_BODY}))
    check.send(403, users.request({"name": "x"}), AdminClient(setup.gateway.url, KEYS.user))
    slow = _slow_body(setup.gateway)
    assert slow.status == 408, slow
    check.check("POST", users.request({}).path, slow)
    if setup.proxy is not None:
        _store_away(setup, check)
    _blocked(setup, check)
    blocked = check.send(429, ROUTER.by_name["users.list"].request({}))  # even with a good key
    assert blocked["error"]["code"] == "too_many_authentication_failures"
    expected = set(REFUSALS) - ({503} if setup.proxy is None else set())
    assert expected <= {status for _, status in check.seen}
    eventually(lambda: status_of(check.client, "whoami") == 200)  # unblocked


def _blocked(setup: Setup, check: Conformance) -> None:
    """Wrong keys until the address is blocked (earlier tests may have counted some)."""
    wrong = AdminClient(setup.gateway.url, "bst_wrong")
    whoami = ROUTER.by_name["whoami"].request({})
    statuses = []
    for _ in range(MAX_FAILURES + 1):
        answer = wrong.exchange(whoami)
        check.check(whoami.method, whoami.path, answer)
        statuses.append(answer.status)
    assert statuses[0] == 401 and statuses[-1] == 429, statuses


def _store_away(setup: Setup, check: Conformance) -> None:
    assert setup.proxy is not None
    setup.proxy.drop()
    try:
        away = check(503, "users.list")["error"]
        assert away["code"] == "store_unavailable"
    finally:
        setup.proxy.forward()
    eventually(lambda: status_of(check.client, "users.list") == 200)


def _slow_body(gateway: GatewayProcess) -> Answer:
    """A request whose body never arrives: the gateway gives up after its body timeout."""
    with socket.create_connection(gateway.host_port, timeout=10) as sock:
        sock.sendall(
            b"POST /admin/v1/users HTTP/1.1\r\nHost: bastion\r\n"
            + f"Authorization: Bearer {KEYS.admin}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        response = HTTPResponse(sock)
        response.begin()
        try:
            headers = {name.lower(): value for name, value in response.getheaders()}
            return Answer(response.status, headers, json.loads(response.read()))
        finally:
            response.close()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/admin/v1/whoami", "GET"),
        ("PATCH", "/admin/v1/keys", "GET, POST"),
        ("TRACE", "/admin/v1/teams/ml/members/ann", "DELETE, PUT"),
        ("POST", "/admin/v1/openapi.json", "GET"),
    ],
)
def test_a_method_a_path_lacks_is_refused_with_the_paths_methods(
    setup: Setup, check: Conformance, method: str, path: str, allowed: str
) -> None:
    """405 names the methods of that path, as the document lists them (not of every path)."""
    answer = check.client.exchange(Request(method, path))
    assert (answer.status, answer.headers.get("allow")) == (405, allowed), answer.body
    assert answer.body["error"]["code"] == "method_not_allowed"
