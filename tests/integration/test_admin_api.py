"""The admin API on a running gateway, and store-issued keys used through the ``openai`` client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from bastion.auth.apikeys import generate_key, hash_key
from bastion.cli import main
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

CHAT = [{"role": "user", "content": "hi"}]
ROOT = generate_key()
ALICE = generate_key()
LEAD = generate_key()


def admin(
    gateway: GatewayProcess, key: str | None, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """Call the admin API; returns the status and the parsed JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(gateway.url + "/admin/v1/" + path, data=data, method=method)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["cache-control"] == "no-store"
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat(gateway: GatewayProcess, key: str, model: str = "test-model") -> str:
    reply = openai_client(gateway.url, key).chat.completions.create(model=model, messages=CHAT)
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(upstream.url, Keys())
    config["models"].append(
        {
            "name": "other-model",
            "upstreams": [{"url": upstream.url, "api_key": {"env": "TEST_UPSTREAM_KEY"}}],
        }
    )
    config["auth"] = {
        "api_keys": [
            {"name": "root", "hash": hash_key(ROOT), "role": "admin"},
            {"name": "alice", "hash": hash_key(ALICE), "role": "user"},
            {"name": "lead", "hash": hash_key(LEAD), "role": "lead"},
        ]
    }
    config["roles"] = {
        "lead": {"routes": ["admin", "inference", "models"], "models": ["test-model"]},
        "test-only": {"routes": ["inference", "models"], "models": ["test-model"]},
    }
    config["teams"] = {"offsite": {"networks": ["10.0.0.0/8"]}, "narrow": {"models": ["test-*"]}}
    config["store"] = {"poll_interval": 0.2, "last_used_interval": 0.2}
    with running_gateway(config, tmp_path_factory.mktemp("admin"), UPSTREAM_KEY) as process:
        yield process


def new_user(gateway: GatewayProcess, name: str, role: str = "user") -> None:
    status, body = admin(gateway, ROOT, "POST", "users", {"name": name, "role": role})
    assert status == 201, body


def new_key(gateway: GatewayProcess, user: str, **extra: Any) -> tuple[str, str]:
    status, body = admin(gateway, ROOT, "POST", "keys", {"user": user, **extra})
    assert status == 201, body
    return body["key"]["id"], body["secret"]


def test_only_admins_reach_the_admin_api(gateway: GatewayProcess) -> None:
    assert admin(gateway, None, "GET", "users")[0] == 401
    assert admin(gateway, generate_key(), "GET", "users")[0] == 401
    status, body = admin(gateway, ALICE, "GET", "users")
    assert status == 403 and body["error"]["type"] == "permission_error"
    assert admin(gateway, ROOT, "GET", "users")[0] == 200
    assert admin(gateway, ROOT, "GET", "nothing-here")[0] == 404
    assert admin(gateway, ROOT, "PATCH", "keys")[0] == 405


def test_key_lifecycle_through_the_openai_client(gateway: GatewayProcess) -> None:
    new_user(gateway, "carol")
    key_id, secret = new_key(gateway, "carol", name="laptop")
    other_id, other = new_key(gateway, "carol", name="ci")
    assert chat(gateway, secret)
    # the list shows both, never a secret
    status, listing = admin(gateway, ROOT, "GET", "keys?user=carol")
    assert status == 200
    assert {k["id"] for k in listing["data"]} == {key_id, other_id}
    assert secret not in json.dumps(listing) and other not in json.dumps(listing)

    assert admin(gateway, ROOT, "POST", f"keys/{key_id}/revoke")[1]["state"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, secret)
    assert chat(gateway, other)  # the user's other key keeps working


def test_rotation_keeps_the_old_key_for_the_overlap(gateway: GatewayProcess) -> None:
    new_user(gateway, "dave")
    key_id, old = new_key(gateway, "dave")
    status, rotated = admin(gateway, ROOT, "POST", f"keys/{key_id}/rotate", {"overlap": 1.5})
    assert status == 201
    new = rotated["secret"]
    assert rotated["key"]["rotated_from"] == key_id
    assert chat(gateway, old) and chat(gateway, new)
    time.sleep(1.7)
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, old)
    assert chat(gateway, new)


def test_expired_store_keys_are_refused(gateway: GatewayProcess) -> None:
    new_user(gateway, "erin")
    _, secret = new_key(gateway, "erin", expires_in=1.0)
    assert chat(gateway, secret)
    time.sleep(1.2)
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(gateway, secret)
    assert refused.value.code == "expired_api_key"


def test_disabled_user_is_refused_and_enabled_again(gateway: GatewayProcess) -> None:
    new_user(gateway, "fay")
    _, secret = new_key(gateway, "fay")
    assert admin(gateway, ROOT, "PATCH", "users/fay", {"disabled": True})[0] == 200
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, secret)
    assert admin(gateway, ROOT, "PATCH", "users/fay", {"disabled": False})[0] == 200
    assert chat(gateway, secret)


def test_a_key_limited_to_one_model_neither_uses_nor_sees_another(
    gateway: GatewayProcess,
) -> None:
    new_user(gateway, "gus")
    _, secret = new_key(gateway, "gus", models=["test-model"])
    assert chat(gateway, secret, "test-model")
    with pytest.raises(openai.PermissionDeniedError):
        chat(gateway, secret, "other-model")
    listed = [m.id for m in openai_client(gateway.url, secret).models.list()]
    assert listed == ["test-model"]


def test_no_admin_operation_gives_more_than_the_caller_has(gateway: GatewayProcess) -> None:
    # "lead" may administer, but only within test-model: as a config key and as a store user
    new_user(gateway, "leo", role="lead")
    _, leo = new_key(gateway, "leo")
    for caller in (LEAD, leo):
        for role in ("admin", "user"):
            status, body = admin(gateway, caller, "POST", "users", {"name": "x", "role": role})
            assert status == 403, body
    assert admin(gateway, leo, "PATCH", "users/leo", {"role": "test-only"})[0] == 403
    assert admin(gateway, leo, "DELETE", "users/leo")[0] == 403
    assert admin(gateway, LEAD, "POST", "users", {"name": "hal", "role": "test-only"})[0] == 201
    new_user(gateway, "ivy", role="admin")
    assert admin(gateway, leo, "POST", "keys", {"user": "ivy"})[0] == 403
    assert admin(gateway, leo, "PATCH", "users/ivy", {"role": "test-only"})[0] == 403
    status, issued = admin(gateway, leo, "POST", "keys", {"user": "hal"})
    assert status == 201
    with pytest.raises(openai.PermissionDeniedError):
        chat(gateway, issued["secret"], "other-model")
    assert admin(gateway, ROOT, "GET", "users/leo")[1]["role"] == "lead"
    # the refusals are in the audit trail, as denied, by the lead
    status, trail = admin(gateway, ROOT, "GET", "audit?actor=leo&outcome=denied")
    assert status == 200
    assert {e["action"] for e in trail["data"]} == {"user.create", "user.update", "user.delete",
                                                   "key.create"}  # fmt: skip


def test_refused_requests_are_audited_without_the_credential(gateway: GatewayProcess) -> None:
    wrong = generate_key()
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, wrong)
    assert admin(gateway, ALICE, "GET", "users")[0] == 403
    deadline = time.monotonic() + 5
    while True:
        _, trail = admin(gateway, ROOT, "GET", "audit?action=request.refused&limit=50")
        statuses = {(e["status"], e["target"], e["actor"]) for e in trail["data"]}
        if {(401, "/v1/chat/completions", "-"), (403, "/admin/v1", "alice")} <= statuses:
            break
        assert time.monotonic() < deadline, trail
        time.sleep(0.1)
    assert wrong not in json.dumps(trail) and ALICE not in json.dumps(trail)


def test_last_used_is_recorded(gateway: GatewayProcess) -> None:
    new_user(gateway, "jay")
    key_id, secret = new_key(gateway, "jay")
    assert admin(gateway, ROOT, "GET", f"keys/{key_id}")[1]["last_used_at"] is None
    before = time.time()
    chat(gateway, secret)
    deadline = time.monotonic() + 5
    while (used := admin(gateway, ROOT, "GET", f"keys/{key_id}")[1]["last_used_at"]) is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert before - 1 <= used <= time.time()


def test_teams_and_roles(gateway: GatewayProcess) -> None:
    new_user(gateway, "kim")
    assert admin(gateway, ROOT, "POST", "teams", {"name": "research"})[0] == 201
    status, team = admin(gateway, ROOT, "PUT", "teams/research/members/kim")
    assert status == 200 and team["members"] == ["kim"]
    assert admin(gateway, ROOT, "GET", "users/kim")[1]["teams"] == ["research"]
    roles = {r["name"] for r in admin(gateway, ROOT, "GET", "roles")[1]["data"]}
    assert {"admin", "operator", "user", "viewer", "lead", "test-only"} <= roles
    assert admin(gateway, ROOT, "POST", "teams", {"name": "research"})[0] == 409
    assert admin(gateway, ROOT, "POST", "users", {"name": "' OR '1'='1"})[0] == 400


def test_team_rules_narrow_their_members(gateway: GatewayProcess) -> None:
    new_user(gateway, "lou")
    _, secret = new_key(gateway, "lou")
    for team in ("offsite", "narrow"):
        assert admin(gateway, ROOT, "POST", "teams", {"name": team})[0] == 201
    assert chat(gateway, secret, "other-model")
    assert admin(gateway, ROOT, "PUT", "teams/narrow/members/lou")[0] == 200
    with pytest.raises(openai.PermissionDeniedError):
        chat(gateway, secret, "other-model")
    assert chat(gateway, secret, "test-model")
    assert admin(gateway, ROOT, "PUT", "teams/offsite/members/lou")[0] == 200
    with pytest.raises(openai.PermissionDeniedError):  # only from 10/8; the test is 127.0.0.1
        chat(gateway, secret, "test-model")
    assert admin(gateway, ROOT, "DELETE", "teams/offsite/members/lou")[0] == 200
    assert chat(gateway, secret, "test-model")


def test_the_cli_works_through_the_admin_api(
    gateway: GatewayProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BASTION_API_KEY", ROOT)
    remote = ["--url", gateway.url, "--json"]
    assert main(["users", "create", "max", "--role", "test-only", *remote]) == 0
    assert json.loads(capsys.readouterr().out)["role"] == "test-only"
    assert main(["keys", "create", "--user", "max", "--expires", "1h", *remote]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert chat(gateway, issued["secret"])
    assert main(["keys", "revoke", issued["key"]["id"], *remote]) == 0
    capsys.readouterr()
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, issued["secret"])
    assert main(["audit", "--action", "key.", "--since", "1h", *remote]) == 0
    trail = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in trail if e["target"] == issued["key"]["id"]] == [
        "key.revoke",
        "key.create",
    ]
    assert all(e["actor"] == "root" for e in trail if e["target"] == issued["key"]["id"])
    # a non-admin key is refused by the gateway, and the CLI says so
    monkeypatch.setenv("BASTION_API_KEY", ALICE)
    assert main(["users", "list", *remote]) == 2
    assert "403" in capsys.readouterr().err
