"""The admin rules: no operation gives anyone more than the caller has."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.admin.service import MAX_OVERLAP, AdminService, Caller
from bastion.auth.identity import Identity, Restrictions
from bastion.errors import BadRequestError, NotFoundError, PermissionDeniedError
from bastion.policy.policy import Policy
from bastion.settings import RoleSettings, Settings
from bastion.store.records import Actor, AuditEvent, AuditQuery
from bastion.store.store import Store

LOCAL = Caller.local("local:ops")
BUILTIN = ("admin", "operator", "user", "viewer")


@pytest.fixture
def policy() -> Policy:
    return Policy(
        Settings(
            roles={
                "lead": RoleSettings(routes=("admin", "inference", "models"), models=("llama-*",)),
                "llama-user": RoleSettings(routes=("inference", "models"), models=("llama-*",)),
            }
        )
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path}/s.db")
    yield opened
    opened.close()


@pytest.fixture
def service(store: Store, policy: Policy) -> AdminService:
    svc = AdminService(store, policy)
    # The people of these tests, made by the unrestricted local operator.
    for name, role in (
        ("root", "admin"),
        ("root2", "admin"),
        ("lead1", "lead"),
        ("lead2", "lead"),
        ("ann", "llama-user"),
        ("uma", "user"),
    ):
        svc.create_user(LOCAL, name, role=role)
    svc.create_team(LOCAL, "ml")
    return svc


def caller(
    policy: Policy, name: str, role: str, restrictions: Restrictions | None = None
) -> Caller:
    """A caller as the admin API builds it: its access is its role narrowed by its key."""
    access = policy.access(
        Identity(
            principal=name,
            role=role,
            credential_id="bst_Abcd",
            method="api_key",
            restrictions=restrictions,
        )
    )
    assert access is not None
    return Caller(Actor(name, "bst_Abcd", "10.0.0.7", "req-1"), principal=name, access=access)


@pytest.fixture
def admin(policy: Policy) -> Caller:
    return caller(policy, "root", "admin")


@pytest.fixture
def lead(policy: Policy) -> Caller:
    return caller(policy, "lead1", "lead")


def denied_rows(service: AdminService) -> list[AuditEvent]:
    return service.audit(AuditQuery(outcome="denied"))


def assert_denied(
    service: AdminService, who: Caller, action: str, target: str, run: Callable[[], Any]
) -> None:
    """``run`` raises PermissionDeniedError and leaves exactly one denied audit row."""
    before = len(denied_rows(service))
    with pytest.raises(PermissionDeniedError):
        run()
    rows = denied_rows(service)
    assert len(rows) == before + 1
    row = rows[0]  # newest first
    assert row.outcome == "denied"
    assert row.status == 403
    assert row.actor == who.actor.name
    assert row.credential == who.actor.credential
    assert row.address == who.actor.address
    assert row.request_id == who.actor.request_id
    assert row.action == action
    assert row.target == target
    assert row.detail is not None
    assert row.detail["reason"]


# -- the local operator -----------------------------------------------------------------------


def test_local_operator_can_do_everything(service: AdminService) -> None:
    for role in (*BUILTIN, "lead", "llama-user"):
        created = service.create_user(LOCAL, f"new-{role}", role=role)
        assert created.role == role
        assert created.created_by == "local:ops"
    assert service.update_user(LOCAL, "root", role="viewer").role == "viewer"
    assert service.update_user(LOCAL, "root2", disabled=True).disabled is True
    assert service.add_member(LOCAL, "ml", "root2").members == ("root2",)
    assert service.remove_member(LOCAL, "ml", "root2").members == ()
    key, secret = service.create_key(LOCAL, "root2")
    assert key.models is None and key.routes is None and key.networks is None
    assert secret.startswith(key.prefix)
    rotated, _ = service.rotate_key(LOCAL, key.id, overlap=60)
    assert rotated.rotated_from == key.id
    assert service.revoke_key(LOCAL, rotated.id).revoked_at is not None
    service.delete_user(LOCAL, "root2")
    with pytest.raises(NotFoundError):
        service.user("root2")
    service.delete_team(LOCAL, "ml")
    assert service.teams() == []

    assert denied_rows(service) == []
    rows = service.audit(AuditQuery(actor="local:ops", limit=1000))
    assert rows and {r.outcome for r in rows} == {"ok"}
    assert {r.credential for r in rows} == {"cli"}
    actions = {r.action for r in rows}
    assert {
        "user.create",
        "user.update",
        "user.delete",
        "team.create",
        "team.add_member",
        "team.remove_member",
        "team.delete",
        "key.create",
        "key.rotate",
        "key.revoke",
    } <= actions


# -- creating users ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", [*BUILTIN, "lead", "llama-user"])
def test_admin_creates_users_of_any_role(service: AdminService, admin: Caller, role: str) -> None:
    created = service.create_user(admin, "newbie", role=role, kind="service", description="d")
    assert (created.role, created.kind, created.description) == (role, "service", "d")
    assert created.created_by == "root"
    row = service.audit(AuditQuery(action="user.create", limit=1))[0]
    assert (row.actor, row.target, row.outcome, row.status) == ("root", "newbie", "ok", 0)
    assert row.credential == "bst_Abcd"
    assert row.detail == {"role": role, "kind": "service"}


@pytest.mark.parametrize("role", BUILTIN)
def test_lead_cannot_create_a_wider_role(service: AdminService, lead: Caller, role: str) -> None:
    # admin and operator have more routes; user and viewer see every model, not only llama-*.
    assert_denied(
        service,
        lead,
        "user.create",
        "newbie",
        lambda: service.create_user(lead, "newbie", role=role),
    )
    with pytest.raises(NotFoundError):
        service.user("newbie")


@pytest.mark.parametrize("role", ["llama-user", "lead"])
def test_lead_creates_roles_within_its_own(service: AdminService, lead: Caller, role: str) -> None:
    assert service.create_user(lead, "newbie", role=role).role == role
    assert denied_rows(service) == []
    assert service.audit(AuditQuery(action="user.create", limit=1))[0].outcome == "ok"


def test_a_restricted_key_narrows_what_its_holder_can_grant(
    service: AdminService, policy: Policy
) -> None:
    # An admin whose key only reaches llama-3 can no longer hand out "llama-user" (llama-*).
    narrow = caller(policy, "root", "admin", Restrictions(models=("llama-3",)))
    assert_denied(
        service,
        narrow,
        "user.create",
        "newbie",
        lambda: service.create_user(narrow, "newbie", role="llama-user"),
    )
    # ... and one whose key has no admin routes cannot give "lead" (it has "admin").
    no_admin = caller(policy, "root", "admin", Restrictions(routes=("inference", "models")))
    assert_denied(
        service,
        no_admin,
        "user.create",
        "newbie",
        lambda: service.create_user(no_admin, "newbie", role="lead"),
    )
    assert service.create_user(no_admin, "newbie", role="user").role == "user"


@pytest.mark.parametrize("who", ["local", "admin", "lead"])
def test_unknown_role_is_a_bad_request(
    service: AdminService, admin: Caller, lead: Caller, who: str
) -> None:
    by = {"local": LOCAL, "admin": admin, "lead": lead}[who]
    with pytest.raises(BadRequestError, match="unknown role"):
        service.create_user(by, "newbie", role="wizard")
    with pytest.raises(BadRequestError, match="unknown role"):
        service.update_user(by, "ann", role="wizard")
    with pytest.raises(NotFoundError):
        service.user("newbie")
    assert service.user("ann").role == "llama-user"
    assert denied_rows(service) == []


# -- oneself ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "role"), [("root", "admin"), ("lead1", "lead")])
def test_nobody_changes_their_own_role_or_disables_or_deletes_themselves(
    service: AdminService, policy: Policy, name: str, role: str
) -> None:
    me = caller(policy, name, role)
    # Even to the same role, or to a narrower one.
    for new_role in (role, "llama-user"):
        assert_denied(
            service,
            me,
            "user.update",
            name,
            lambda new_role=new_role: service.update_user(me, name, role=new_role),
        )
    assert_denied(
        service, me, "user.update", name, lambda: service.update_user(me, name, disabled=True)
    )
    assert_denied(service, me, "user.delete", name, lambda: service.delete_user(me, name))
    after = service.user(name)
    assert (after.role, after.disabled) == (role, False)
    # Their own description is theirs to change.
    assert service.update_user(me, name, description="me").description == "me"


# -- managing others --------------------------------------------------------------------------


def test_lead_cannot_manage_an_admin(service: AdminService, lead: Caller) -> None:
    assert_denied(
        service,
        lead,
        "user.update",
        "root",
        lambda: service.update_user(lead, "root", description="x"),
    )
    assert_denied(
        service,
        lead,
        "user.update",
        "root",
        lambda: service.update_user(lead, "root", disabled=True),
    )
    assert_denied(
        service,
        lead,
        "user.update",
        "root",
        lambda: service.update_user(lead, "root", role="llama-user"),
    )
    assert_denied(service, lead, "user.delete", "root", lambda: service.delete_user(lead, "root"))
    assert_denied(
        service,
        lead,
        "team.add_member",
        "root",
        lambda: service.add_member(lead, "ml", "root"),
    )
    service.add_member(LOCAL, "ml", "root")
    assert_denied(
        service,
        lead,
        "team.remove_member",
        "root",
        lambda: service.remove_member(lead, "ml", "root"),
    )
    root = service.user("root")
    assert (root.role, root.disabled, root.description, root.teams) == ("admin", False, "", ("ml",))


def test_lead_cannot_manage_a_user_seeing_every_model(service: AdminService, lead: Caller) -> None:
    # "user" has no more routes than "lead", but every model: still more than the lead's.
    assert_denied(
        service, lead, "user.update", "uma", lambda: service.update_user(lead, "uma", disabled=True)
    )
    assert_denied(service, lead, "user.delete", "uma", lambda: service.delete_user(lead, "uma"))
    assert service.user("uma").disabled is False


def test_lead_manages_users_within_its_access(service: AdminService, lead: Caller) -> None:
    assert service.update_user(lead, "ann", description="x", disabled=True).disabled is True
    assert service.update_user(lead, "ann", role="lead").role == "lead"
    assert service.update_user(lead, "lead2", role="llama-user").role == "llama-user"
    assert service.add_member(lead, "ml", "ann").members == ("ann",)
    assert service.remove_member(lead, "ml", "ann").members == ()
    service.delete_user(lead, "ann")
    with pytest.raises(NotFoundError):
        service.user("ann")
    assert denied_rows(service) == []


def test_lead_cannot_promote_a_user_beyond_its_access(service: AdminService, lead: Caller) -> None:
    assert_denied(
        service, lead, "user.update", "ann", lambda: service.update_user(lead, "ann", role="admin")
    )
    assert service.user("ann").role == "llama-user"


def test_admin_manages_another_admin(service: AdminService, admin: Caller) -> None:
    assert service.update_user(admin, "root2", disabled=True).disabled is True
    service.delete_user(admin, "root2")
    assert denied_rows(service) == []


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "role"), [("root", "admin"), ("lead1", "lead")])
def test_a_key_for_oneself_cannot_be_wider_than_the_key_in_use(
    service: AdminService, policy: Policy, name: str, role: str
) -> None:
    me = caller(policy, name, role, Restrictions(models=("llama-3",)))
    assert_denied(service, me, "key.create", name, lambda: service.create_key(me, name))
    assert_denied(
        service, me, "key.create", name, lambda: service.create_key(me, name, models=["llama-*"])
    )
    assert service.keys(name) == []
    key, _ = service.create_key(me, name, models=["llama-3"])
    assert key.models == ("llama-3",)
    assert key.principal == name and key.created_by == name
    # Narrower still is fine too.
    key, _ = service.create_key(me, name, models=["llama-3"], routes=["chat"])
    assert key.routes == ("chat",)


def test_a_network_restricted_caller_cannot_issue_keys_usable_from_anywhere(
    service: AdminService, policy: Policy
) -> None:
    me = caller(policy, "root", "admin", Restrictions(networks=("10.0.0.0/8",)))
    assert_denied(service, me, "key.create", "root", lambda: service.create_key(me, "root"))
    assert_denied(
        service,
        me,
        "key.create",
        "root",
        lambda: service.create_key(me, "root", networks=["0.0.0.0/0"]),
    )
    key, _ = service.create_key(me, "root", networks=["10.1.0.0/16"])
    assert key.networks == ("10.1.0.0/16",)


def test_lead_cannot_create_revoke_or_rotate_an_admins_keys(
    service: AdminService, lead: Caller
) -> None:
    key, _ = service.create_key(LOCAL, "root", models=["llama-3"])
    assert_denied(service, lead, "key.create", "root", lambda: service.create_key(lead, "root"))
    # Even a key narrowed to the lead's models: the admin's routes stay wider.
    assert_denied(
        service,
        lead,
        "key.create",
        "root",
        lambda: service.create_key(lead, "root", models=["llama-3"]),
    )
    assert_denied(service, lead, "key.revoke", "root", lambda: service.revoke_key(lead, key.id))
    assert_denied(
        service, lead, "key.rotate", "root", lambda: service.rotate_key(lead, key.id, overlap=60)
    )
    assert [k.id for k in service.keys("root", include_revoked=True)] == [key.id]
    assert service.key(key.id).revoked_at is None
    assert service.key(key.id).expires_at is None


def test_lead_manages_keys_within_its_access(service: AdminService, lead: Caller) -> None:
    key, _ = service.create_key(lead, "ann")
    rotated, _ = service.rotate_key(lead, key.id, overlap=0)
    assert service.key(key.id).revoked_at is not None
    assert service.revoke_key(lead, rotated.id).revoked_at is not None
    # A "user" sees every model, but a key of theirs narrowed to llama-3 lies within the lead's.
    narrowed, _ = service.create_key(lead, "uma", models=["llama-3"])
    assert_denied(service, lead, "key.create", "uma", lambda: service.create_key(lead, "uma"))
    assert service.revoke_key(lead, narrowed.id).revoked_at is not None
    rows = service.audit(AuditQuery(actor="lead1", outcome="ok"))
    assert [r.action for r in rows] == ["key.revoke", "key.create", "key.revoke", "key.rotate",
                                        "key.create"]  # fmt: skip


@pytest.mark.parametrize(
    "restrictions",
    [
        {"routes": ["fly"]},
        {"routes": ["chat", "fly"]},
        {"networks": ["not-a-cidr"]},
        {"models": "llama-3"},
        {"models": [1]},
        {"models": [""]},
        {"models": ["x" * 201]},
        {"models": [f"m{i}" for i in range(101)]},
        {"routes": "chat"},
        {"networks": [None]},
    ],
)
@pytest.mark.parametrize("who", ["local", "admin"])
def test_bad_restrictions_are_a_bad_request(
    service: AdminService, admin: Caller, who: str, restrictions: dict[str, Any]
) -> None:
    by = LOCAL if who == "local" else admin
    with pytest.raises(BadRequestError):
        service.create_key(by, "root", **restrictions)
    assert service.keys(include_revoked=True) == []
    assert service.audit(AuditQuery(action="key.")) == []


def test_expiry_in_the_past_or_not_a_moment_is_a_bad_request(service: AdminService) -> None:
    for when in (time.time() - 1, 0.0, float("nan"), float("inf")):
        with pytest.raises(BadRequestError, match="in the future"):
            service.create_key(LOCAL, "root", expires_at=when)
    assert service.keys() == []
    future = time.time() + 3600
    key, _ = service.create_key(LOCAL, "root", expires_at=future)
    assert key.expires_at == pytest.approx(future)


@pytest.mark.parametrize("overlap", [-1.0, MAX_OVERLAP + 1, float("nan"), float("inf")])
def test_rotate_overlap_outside_zero_to_thirty_days_is_a_bad_request(
    service: AdminService, overlap: float
) -> None:
    key, _ = service.create_key(LOCAL, "root")
    with pytest.raises(BadRequestError, match="overlap"):
        service.rotate_key(LOCAL, key.id, overlap=overlap)
    assert [k.id for k in service.keys("root")] == [key.id]
    assert service.key(key.id).expires_at is None


@pytest.mark.parametrize("overlap", [0.0, 600.0, MAX_OVERLAP])
def test_rotate_overlap_within_bounds(service: AdminService, overlap: float) -> None:
    key, _ = service.create_key(LOCAL, "root", models=["m"])
    new, secret = service.rotate_key(LOCAL, key.id, overlap=overlap)
    assert new.rotated_from == key.id and new.models == ("m",)
    assert secret.startswith(new.prefix)
    old = service.key(key.id)
    if overlap == 0:
        assert old.revoked_at is not None
    else:
        assert old.revoked_at is None
        assert old.expires_at == pytest.approx(time.time() + overlap, abs=5)


def test_unknown_key_or_user_is_not_found(service: AdminService, admin: Caller) -> None:
    with pytest.raises(NotFoundError):
        service.create_key(admin, "nobody")
    with pytest.raises(NotFoundError):
        service.revoke_key(admin, "key_missing")
    with pytest.raises(NotFoundError):
        service.rotate_key(admin, "key_missing", overlap=0)
    with pytest.raises(NotFoundError):
        service.update_user(admin, "nobody", description="x")
    with pytest.raises(NotFoundError):
        service.delete_user(admin, "nobody")
    assert denied_rows(service) == []


# -- the audit trail --------------------------------------------------------------------------


def test_successful_operations_are_audited_ok_and_denied_ones_denied(
    service: AdminService, lead: Caller
) -> None:
    service.create_user(lead, "newbie", role="llama-user")
    with pytest.raises(PermissionDeniedError):
        service.create_user(lead, "boss", role="admin")
    key, secret = service.create_key(lead, "newbie")
    with pytest.raises(PermissionDeniedError):
        service.delete_user(lead, "root")

    rows = service.audit(AuditQuery(actor="lead1"))
    summary = [(r.action, r.target, r.outcome, r.status) for r in rows]
    assert summary == [
        ("user.delete", "root", "denied", 403),
        ("key.create", key.id, "ok", 0),
        ("user.create", "boss", "denied", 403),
        ("user.create", "newbie", "ok", 0),
    ]
    for row in rows:
        assert (row.credential, row.address, row.request_id) == ("bst_Abcd", "10.0.0.7", "req-1")
        assert secret not in repr(row.public())
