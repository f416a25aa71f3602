"""The identity store against SQLite and PostgreSQL: principals, teams, keys, the snapshot the
gateways cache, the revision that tells them to reload, and the audit trail."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import orjson
import pytest

from bastion.auth.apikeys import KEY_LENGTH, has_valid_checksum, hash_key
from bastion.errors import BadRequestError, ConflictError, NotFoundError
from bastion.store.records import Actor, AuditEvent, AuditQuery, KeyGrant
from bastion.store.store import Store
from tests.unit.store.dbtools import dump_database

T = TypeVar("T")

ADMIN = Actor("root-admin", credential="key_admin01", address="192.0.2.10", request_id="req-1")
OTHER = Actor("ops-bot", credential="cli")

INVALID_NAMES = [
    "' OR '1'='1",
    "a\x00b",
    "",
    "x" * 200,
    "x" * 129,
    "bø",
    "a b",
    "alice\n",
    "-leading-dash",
    ".hidden",
    "a/b",
    "a;DROP TABLE principals",
]
VALID_NAMES = ["a", "x" * 128, "svc.bot@corp+ci_1-x", "Alice", "0day"]


def all_audit(store: Store) -> list[AuditEvent]:
    return store.audit(AuditQuery(limit=10_000))


def grant(store: Store, key_id: str) -> KeyGrant | None:
    found = [g for g in store.snapshot().keys if g.id == key_id]
    assert len(found) <= 1
    return found[0] if found else None


def admin_write(
    store: Store,
    operation: Callable[[], T],
    *,
    action: str,
    target: str | Callable[[T], str],
    detail: dict[str, Any] | Callable[[T], dict[str, Any]] | None,
    actor: Actor = ADMIN,
) -> T:
    """Run one administrative write; check that it bumped the revision by exactly one and
    wrote exactly one audit line, describing it (``target`` and ``detail`` may be computed
    from the operation's result)."""
    revision = store.revision()
    before = all_audit(store)
    started = time.time()
    result = operation()
    ended = time.time()
    assert store.revision() == revision + 1, action
    after = all_audit(store)
    assert len(after) == len(before) + 1, action
    line = after[0]
    if callable(target):
        target = target(result)
    if callable(detail):
        detail = detail(result)
    assert line.id is not None
    assert all(line.id > old.id for old in before if old.id is not None)
    assert (line.actor, line.action, line.target, line.outcome) == (
        actor.name,
        action,
        target,
        "ok",
    )
    assert (line.credential, line.address, line.request_id, line.status) == (
        actor.credential,
        actor.address,
        actor.request_id,
        0,
    )
    assert line.detail == detail, action
    assert started <= line.at <= ended
    return result


def assert_nothing_written(store: Store, revision: int, audit_lines: int) -> None:
    assert store.revision() == revision
    assert len(all_audit(store)) == audit_lines


# -- principals ---------------------------------------------------------------------------


def test_a_new_store_is_empty(store: Store) -> None:
    assert store.is_empty()
    assert store.principals() == []
    assert store.teams() == []
    assert store.keys() == []
    assert store.snapshot().keys == ()
    assert store.snapshot().revision == store.revision() == 1
    assert all_audit(store) == []


def test_create_and_show_a_principal(store: Store) -> None:
    before = time.time()
    created = admin_write(
        store,
        lambda: store.create_principal(
            ADMIN, "alice", role="user", description="Alice from research"
        ),
        action="user.create",
        target="alice",
        detail={"role": "user", "kind": "user"},
    )
    after = time.time()
    assert created.name == "alice"
    assert created.kind == "user"
    assert created.role == "user"
    assert created.description == "Alice from research"
    assert created.disabled is False
    assert created.created_by == ADMIN.name
    assert created.teams == ()
    assert created.id.startswith("usr_") and len(created.id) == 20
    assert before <= created.created_at == created.updated_at <= after
    assert store.principal("alice") == created
    assert not store.is_empty()


def test_a_service_account(store: Store) -> None:
    created = admin_write(
        store,
        lambda: store.create_principal(OTHER, "ci-runner", role="viewer", kind="service"),
        action="user.create",
        target="ci-runner",
        detail={"role": "viewer", "kind": "service"},
        actor=OTHER,
    )
    assert (created.kind, created.role, created.created_by) == ("service", "viewer", "ops-bot")
    assert store.principal("ci-runner").kind == "service"


def test_principal_ids_are_unique(store: Store) -> None:
    ids = {store.create_principal(ADMIN, f"user{i}", role="user").id for i in range(5)}
    assert len(ids) == 5


def test_list_principals_sorted_by_name(store: Store) -> None:
    for name in ["carol", "alice", "bob"]:
        store.create_principal(ADMIN, name, role="user")
    listed = store.principals()
    assert [p.name for p in listed] == ["alice", "bob", "carol"]
    assert listed == [store.principal(name) for name in ["alice", "bob", "carol"]]


def test_duplicate_principal_name_conflicts_and_changes_nothing(store: Store) -> None:
    first = store.create_principal(ADMIN, "alice", role="user")
    revision, lines = store.revision(), len(all_audit(store))
    with pytest.raises(ConflictError):
        store.create_principal(ADMIN, "alice", role="admin", kind="service")
    assert_nothing_written(store, revision, lines)
    assert store.principals() == [first]


def test_names_are_case_sensitive(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_principal(ADMIN, "Alice", role="admin")
    assert store.principal("alice").role == "user"
    assert store.principal("Alice").role == "admin"


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_invalid_principal_name_is_refused_and_nothing_stored(store: Store, name: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        store.create_principal(ADMIN, name, role="user")
    assert caught.value.param == "name"
    assert_nothing_written(store, 1, 0)
    assert store.principals() == []
    assert store.is_empty()
    assert dump_database(store.url)["principals"] == []


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_principal_names(store: Store, name: str) -> None:
    assert store.create_principal(ADMIN, name, role="user").name == name
    assert store.principal(name).name == name


def test_unknown_kind_is_refused(store: Store) -> None:
    with pytest.raises(BadRequestError) as caught:
        store.create_principal(ADMIN, "alice", role="user", kind="robot")
    assert caught.value.param == "kind"
    assert_nothing_written(store, 1, 0)
    assert store.principals() == []


def test_update_principal(store: Store) -> None:
    created = store.create_principal(ADMIN, "alice", role="user")
    updated = admin_write(
        store,
        lambda: store.update_principal(ADMIN, "alice", role="operator"),
        action="user.update",
        target="alice",
        detail={"role": "operator"},
    )
    assert updated.role == "operator"
    assert updated.updated_at >= created.updated_at
    assert (updated.id, updated.created_at, updated.description) == (
        created.id,
        created.created_at,
        created.description,
    )
    updated = admin_write(
        store,
        lambda: store.update_principal(ADMIN, "alice", disabled=True, description="on leave"),
        action="user.update",
        target="alice",
        detail={"disabled": True, "description": "on leave"},
    )
    assert (updated.role, updated.disabled, updated.description) == (
        "operator",
        True,
        "on leave",
    )
    assert store.principal("alice") == updated
    assert store.update_principal(ADMIN, "alice", disabled=False).disabled is False


def test_update_with_nothing_to_change_is_refused(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    revision, lines = store.revision(), len(all_audit(store))
    with pytest.raises(BadRequestError):
        store.update_principal(ADMIN, "alice")
    assert_nothing_written(store, revision, lines)


def test_delete_principal(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_principal(ADMIN, "bob", role="user")
    admin_write(
        store,
        lambda: store.delete_principal(ADMIN, "alice"),
        action="user.delete",
        target="alice",
        detail=None,
    )
    with pytest.raises(NotFoundError):
        store.principal("alice")
    assert [p.name for p in store.principals()] == ["bob"]
    # The audit trail keeps what happened to the deleted user.
    assert [e.action for e in store.audit(AuditQuery(action="user."))] == [
        "user.delete",
        "user.create",
        "user.create",
    ]
    # The name is free again.
    assert store.create_principal(ADMIN, "alice", role="viewer").role == "viewer"


def test_delete_principal_removes_its_keys_and_memberships(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_principal(ADMIN, "bob", role="user")
    store.create_team(ADMIN, "research")
    store.add_member(ADMIN, "research", "alice")
    store.add_member(ADMIN, "research", "bob")
    alice_keys = [store.create_key(ADMIN, "alice", name=f"k{i}")[0] for i in range(2)]
    revoked, _ = store.create_key(ADMIN, "alice", name="old")
    store.revoke_key(ADMIN, revoked.id)
    bob_key, _ = store.create_key(ADMIN, "bob")

    store.delete_principal(ADMIN, "alice")

    for key in [*alice_keys, revoked]:
        with pytest.raises(NotFoundError):
            store.key(key.id)
    assert store.keys(include_revoked=True) == [bob_key]
    assert [g.id for g in store.snapshot().keys] == [bob_key.id]
    assert store.team("research").members == ("bob",)
    rows = dump_database(store.url)
    assert [row["id"] for row in rows["api_keys"]] == [bob_key.id]
    assert len(rows["team_members"]) == 1
    assert [row["name"] for row in rows["principals"]] == ["bob"]


# -- teams --------------------------------------------------------------------------------


def test_create_list_and_delete_teams(store: Store) -> None:
    before = time.time()
    created = admin_write(
        store,
        lambda: store.create_team(ADMIN, "research", description="the lab"),
        action="team.create",
        target="research",
        detail=None,
    )
    assert created.name == "research"
    assert created.description == "the lab"
    assert created.members == ()
    assert created.created_by == ADMIN.name
    assert created.id.startswith("team_")
    assert before <= created.created_at <= time.time()
    store.create_team(ADMIN, "applied")
    assert [team.name for team in store.teams()] == ["applied", "research"]
    assert store.team("research") == created

    admin_write(
        store,
        lambda: store.delete_team(ADMIN, "research"),
        action="team.delete",
        target="research",
        detail=None,
    )
    assert [team.name for team in store.teams()] == ["applied"]
    with pytest.raises(NotFoundError):
        store.team("research")


def test_duplicate_team_conflicts(store: Store) -> None:
    store.create_team(ADMIN, "research")
    revision, lines = store.revision(), len(all_audit(store))
    with pytest.raises(ConflictError):
        store.create_team(ADMIN, "research")
    assert_nothing_written(store, revision, lines)
    assert len(store.teams()) == 1


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_invalid_team_name_is_refused(store: Store, name: str) -> None:
    with pytest.raises(BadRequestError):
        store.create_team(ADMIN, name)
    assert_nothing_written(store, 1, 0)
    assert store.teams() == []


def test_members(store: Store) -> None:
    for name in ["carol", "alice", "bob"]:
        store.create_principal(ADMIN, name, role="user")
    store.create_team(ADMIN, "research")
    store.create_team(ADMIN, "applied")

    team = admin_write(
        store,
        lambda: store.add_member(ADMIN, "research", "carol"),
        action="team.add_member",
        target="research",
        detail={"user": "carol"},
    )
    assert team.members == ("carol",)
    store.add_member(ADMIN, "research", "alice")
    store.add_member(ADMIN, "applied", "alice")
    assert store.team("research").members == ("alice", "carol")
    assert {t.name: t.members for t in store.teams()} == {
        "applied": ("alice",),
        "research": ("alice", "carol"),
    }
    # A principal lists its teams, sorted, both alone and in the list.
    assert store.principal("alice").teams == ("applied", "research")
    assert store.principal("carol").teams == ("research",)
    assert store.principal("bob").teams == ()
    assert {p.name: p.teams for p in store.principals()} == {
        "alice": ("applied", "research"),
        "bob": (),
        "carol": ("research",),
    }

    # Adding again changes nothing but is still recorded.
    again = store.add_member(ADMIN, "research", "alice")
    assert again.members == ("alice", "carol")
    assert len(dump_database(store.url)["team_members"]) == 3

    team = admin_write(
        store,
        lambda: store.remove_member(ADMIN, "research", "alice"),
        action="team.remove_member",
        target="research",
        detail={"user": "alice"},
    )
    assert team.members == ("carol",)
    assert store.principal("alice").teams == ("applied",)

    # Deleting a team takes it off its members.
    store.delete_team(ADMIN, "applied")
    assert store.principal("alice").teams == ()
    assert len(dump_database(store.url)["team_members"]) == 1


def test_remove_a_non_member(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_team(ADMIN, "research")
    revision, lines = store.revision(), len(all_audit(store))
    with pytest.raises(NotFoundError):
        store.remove_member(ADMIN, "research", "alice")
    assert_nothing_written(store, revision, lines)


# -- keys ---------------------------------------------------------------------------------


def test_create_key(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    before = time.time()
    key, secret = store.create_key(ADMIN, "alice", name="laptop")
    after = time.time()
    assert isinstance(secret, str)
    assert len(secret) == KEY_LENGTH
    assert has_valid_checksum(secret.encode())
    assert key.prefix == secret[:8]
    assert key.prefix.startswith("bst_")
    assert key.id.startswith("key_")
    assert (key.principal, key.name, key.created_by) == ("alice", "laptop", ADMIN.name)
    assert (key.models, key.routes, key.networks) == (None, None, None)
    assert (key.expires_at, key.revoked_at, key.last_used_at, key.rotated_from) == (
        None,
        None,
        None,
        None,
    )
    assert before <= key.created_at <= after
    assert key.state(time.time()) == "active"
    assert store.key(key.id) == key
    assert store.keys() == [key]
    assert store.keys("alice") == [key]

    rows = dump_database(store.url)["api_keys"]
    assert len(rows) == 1
    assert rows[0]["digest"] == hash_key(secret).removeprefix("sha256:")
    assert rows[0]["digest"] == hashlib.sha256(secret.encode()).hexdigest()
    assert rows[0]["prefix"] == secret[:8]


def test_create_key_is_audited_once(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    revision, lines = store.revision(), len(all_audit(store))
    key, secret = store.create_key(ADMIN, "alice", name="laptop", expires_at=2_000_000_000.0)
    assert store.revision() == revision + 1
    audit = all_audit(store)
    assert len(audit) == lines + 1
    line = audit[0]
    assert (line.actor, line.action, line.target, line.outcome) == (
        ADMIN.name,
        "key.create",
        key.id,
        "ok",
    )
    assert line.detail == {"user": "alice", "name": "laptop", "expires_at": 2_000_000_000.0}
    assert secret not in orjson.dumps(line.detail).decode()


def test_every_key_is_different(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    made = [store.create_key(ADMIN, "alice") for _ in range(5)]
    assert len({secret for _, secret in made}) == 5
    assert len({key.id for key, _ in made}) == 5


def test_key_restrictions_round_trip(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    key, _ = store.create_key(
        ADMIN,
        "alice",
        name="lab",
        models=["llama-3-*", "gemma"],
        routes=("chat", "models"),
        networks=["10.0.0.0/8", "2001:db8::/32"],
        expires_at=4_000_000_000.5,
    )
    assert key.models == ("llama-3-*", "gemma")
    assert key.routes == ("chat", "models")
    assert key.networks == ("10.0.0.0/8", "2001:db8::/32")
    assert key.expires_at == 4_000_000_000.5
    assert store.key(key.id) == key
    # An empty list restricts to nothing; it must not come back as "no restriction".
    empty, _ = store.create_key(ADMIN, "alice", name="nothing", models=[], routes=[], networks=[])
    assert (empty.models, empty.routes, empty.networks) == ((), (), ())
    found = grant(store, empty.id)
    assert found is not None
    assert (found.models, found.routes, found.networks) == ((), (), ())


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_invalid_key_name_is_refused(store: Store, name: str) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    revision, lines = store.revision(), len(all_audit(store))
    with pytest.raises(BadRequestError):
        store.create_key(ADMIN, "alice", name=name)
    assert_nothing_written(store, revision, lines)
    assert store.keys(include_revoked=True) == []


def test_secrets_are_never_stored(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_team(ADMIN, "research")
    store.add_member(ADMIN, "research", "alice")
    secrets: list[str] = []
    key, secret = store.create_key(ADMIN, "alice", name="one", models=["*"])
    secrets.append(secret)
    other, secret = store.create_key(ADMIN, "alice", name="two")
    secrets.append(secret)
    rotated, secret = store.rotate_key(ADMIN, key.id, overlap=60)
    secrets.append(secret)
    _, secret = store.rotate_key(ADMIN, other.id, overlap=0)
    secrets.append(secret)
    store.revoke_key(ADMIN, rotated.id)
    store.touch_keys({rotated.id: time.time()})

    rows = dump_database(store.url)
    assert set(rows) >= {"api_keys", "audit_log", "principals", "teams", "team_members"}
    everything = repr(rows)
    assert len(rows["api_keys"]) == 4
    assert len(rows["audit_log"]) >= 7
    for secret in secrets:
        assert has_valid_checksum(secret.encode())
        assert secret not in everything
        body = secret[4:]
        # Not even a part of it longer than the displayed prefix.
        for start in range(len(body) - 8):
            assert body[start : start + 9] not in everything
        assert hash_key(secret).removeprefix("sha256:") in everything
    # What the API returns about keys and the audit trail does not carry them either.
    public = repr([k.public(time.time()) for k in store.keys(include_revoked=True)])
    public += repr([e.public() for e in all_audit(store)])
    for secret in secrets:
        assert secret not in public
        assert secret[4:] not in public


def test_list_keys(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_principal(ADMIN, "bob", role="user")
    a1, _ = store.create_key(ADMIN, "alice", name="a1")
    b1, _ = store.create_key(ADMIN, "bob", name="b1")
    a2, _ = store.create_key(ADMIN, "alice", name="a2")
    expired, _ = store.create_key(ADMIN, "alice", name="gone", expires_at=time.time() - 10)
    store.revoke_key(ADMIN, a2.id)
    a2 = store.key(a2.id)

    assert store.keys() == [a1, b1, expired]
    assert store.keys("alice") == [a1, expired]
    assert store.keys("bob") == [b1]
    assert store.keys(include_revoked=True) == [a1, b1, a2, expired]
    assert store.keys("alice", include_revoked=True) == [a1, a2, expired]
    assert expired.state(time.time()) == "expired"
    assert a2.state(time.time()) == "revoked"


def test_revoke_key(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    key, _ = store.create_key(ADMIN, "alice")
    keep, _ = store.create_key(ADMIN, "alice", name="keep")
    assert grant(store, key.id) is not None
    before = time.time()
    revoked = admin_write(
        store,
        lambda: store.revoke_key(ADMIN, key.id),
        action="key.revoke",
        target=key.id,
        detail={"user": "alice"},
    )
    assert revoked.revoked_at is not None
    assert before <= revoked.revoked_at <= time.time()
    assert revoked.state(time.time()) == "revoked"
    assert replace(revoked, revoked_at=None) == key
    assert store.key(key.id) == revoked
    assert grant(store, key.id) is None
    assert grant(store, keep.id) is not None
    assert store.keys() == [keep]
    # Revoking again keeps the first revocation time.
    assert store.revoke_key(ADMIN, key.id).revoked_at == revoked.revoked_at


def test_rotate_key_with_overlap(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_team(ADMIN, "research")
    store.add_member(ADMIN, "research", "alice")
    old, old_secret = store.create_key(
        ADMIN, "alice", name="lab", models=["llama-*"], routes=["chat"], networks=["10.0.0.0/8"]
    )
    revision = store.revision()
    before = time.time()
    new, secret = store.rotate_key(OTHER, old.id, overlap=3600.0)
    after = time.time()
    assert store.revision() == revision + 1

    assert has_valid_checksum(secret.encode())
    assert secret != old_secret
    assert new.id != old.id
    assert new.rotated_from == old.id
    assert new.prefix == secret[:8]
    assert (new.principal, new.name, new.models, new.routes, new.networks) == (
        "alice",
        "lab",
        ("llama-*",),
        ("chat",),
        ("10.0.0.0/8",),
    )
    assert new.created_by == OTHER.name
    assert new.expires_at is None
    assert new.revoked_at is None
    assert new.state(time.time()) == "active"
    assert store.key(new.id) == new

    ended = store.key(old.id)
    assert ended.revoked_at is None
    assert ended.expires_at is not None
    assert before + 3600 <= ended.expires_at <= after + 3600
    assert ended.state(time.time()) == "active"  # still works during the overlap
    assert ended.state(after + 3601) == "expired"
    assert ended.rotated_from is None

    old_grant, new_grant = grant(store, old.id), grant(store, new.id)
    assert old_grant is not None and new_grant is not None
    assert old_grant.expires_at == ended.expires_at
    assert new_grant.expires_at is None
    assert new_grant.digest == hashlib.sha256(secret.encode()).digest()
    assert new_grant.teams == ("research",)
    assert new_grant.models == ("llama-*",)

    line = all_audit(store)[0]
    assert (line.actor, line.action, line.target, line.outcome) == (
        OTHER.name,
        "key.rotate",
        old.id,
        "ok",
    )
    assert line.detail == {"new_key": new.id, "overlap": 3600.0}


def test_rotate_keeps_an_earlier_expiry(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    expires = time.time() + 100
    old, _ = store.create_key(ADMIN, "alice", expires_at=expires)
    new, _ = store.rotate_key(ADMIN, old.id, overlap=3600)
    assert store.key(old.id).expires_at == expires  # the overlap never extends a key
    assert new.expires_at == expires


def test_rotate_without_overlap_revokes_the_old_key(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    old, _ = store.create_key(ADMIN, "alice")
    before = time.time()
    new, _ = store.rotate_key(ADMIN, old.id, overlap=0)
    ended = store.key(old.id)
    assert ended.revoked_at is not None
    assert before <= ended.revoked_at <= time.time()
    assert ended.expires_at is None
    assert new.rotated_from == old.id
    assert [g.id for g in store.snapshot().keys] == [new.id]
    assert store.keys() == [new]


@pytest.mark.parametrize("overlap", [0, 60])
def test_only_active_keys_rotate(store: Store, overlap: float) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    revoked, _ = store.create_key(ADMIN, "alice", name="revoked")
    store.revoke_key(ADMIN, revoked.id)
    expired, _ = store.create_key(ADMIN, "alice", name="expired", expires_at=time.time() - 1)
    revision, lines = store.revision(), len(all_audit(store))
    for key in (revoked, expired):
        with pytest.raises(ConflictError):
            store.rotate_key(ADMIN, key.id, overlap=overlap)
    assert_nothing_written(store, revision, lines)
    assert len(store.keys(include_revoked=True)) == 2


def test_a_rotated_key_rotates_once_without_overlap(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    old, _ = store.create_key(ADMIN, "alice")
    store.rotate_key(ADMIN, old.id, overlap=0)
    with pytest.raises(ConflictError):
        store.rotate_key(ADMIN, old.id, overlap=0)
    assert len(store.keys(include_revoked=True)) == 2


# -- snapshot, revision, last use -------------------------------------------------------


def test_snapshot_carries_what_the_gateway_needs(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="operator")
    store.create_principal(ADMIN, "svc", role="viewer", kind="service")
    store.create_team(ADMIN, "research")
    store.create_team(ADMIN, "applied")
    store.add_member(ADMIN, "research", "alice")
    store.add_member(ADMIN, "applied", "alice")
    restricted, secret = store.create_key(
        ADMIN,
        "alice",
        name="lab",
        models=["llama-*"],
        routes=["chat"],
        networks=["10.0.0.0/8"],
        expires_at=3_000_000_000.25,
    )
    plain, plain_secret = store.create_key(ADMIN, "svc")
    expired, _ = store.create_key(ADMIN, "svc", name="old", expires_at=1000.0)

    snapshot = store.snapshot()
    assert snapshot.revision == store.revision()
    by_id = {g.id: g for g in snapshot.keys}
    assert set(by_id) == {restricted.id, plain.id, expired.id}
    assert by_id[restricted.id] == KeyGrant(
        id=restricted.id,
        digest=hashlib.sha256(secret.encode()).digest(),
        principal="alice",
        kind="user",
        role="operator",
        teams=("applied", "research"),
        models=("llama-*",),
        routes=("chat",),
        networks=("10.0.0.0/8",),
        expires_at=3_000_000_000.25,
    )
    assert by_id[plain.id] == KeyGrant(
        id=plain.id,
        digest=hashlib.sha256(plain_secret.encode()).digest(),
        principal="svc",
        kind="service",
        role="viewer",
        teams=(),
        models=None,
        routes=None,
        networks=None,
        expires_at=None,
    )
    # Expired keys stay, with their expiry: the gateway refuses them by time.
    assert by_id[expired.id].expires_at == 1000.0


def test_snapshot_follows_role_and_team_changes(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    key, _ = store.create_key(ADMIN, "alice")
    store.create_team(ADMIN, "research")
    store.add_member(ADMIN, "research", "alice")
    store.update_principal(ADMIN, "alice", role="admin")
    found = grant(store, key.id)
    assert found is not None
    assert (found.role, found.teams) == ("admin", ("research",))
    store.delete_team(ADMIN, "research")
    found = grant(store, key.id)
    assert found is not None
    assert found.teams == ()


def test_disabled_principal_keys_leave_the_snapshot(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_principal(ADMIN, "bob", role="user")
    a1, _ = store.create_key(ADMIN, "alice")
    a2, _ = store.create_key(ADMIN, "alice", name="second")
    b1, _ = store.create_key(ADMIN, "bob")
    store.update_principal(ADMIN, "alice", disabled=True)
    assert [g.id for g in store.snapshot().keys] == [b1.id]
    # The keys themselves are kept (not revoked), and come back when the user is enabled.
    assert store.keys("alice") == [a1, a2]
    store.update_principal(ADMIN, "alice", disabled=False)
    assert {g.id for g in store.snapshot().keys} == {a1.id, a2.id, b1.id}


def test_every_admin_write_bumps_the_revision_once(store: Store) -> None:
    assert store.revision() == 1
    admin_write(
        store,
        lambda: store.create_principal(ADMIN, "alice", role="user"),
        action="user.create",
        target="alice",
        detail={"role": "user", "kind": "user"},
    )
    admin_write(
        store,
        lambda: store.update_principal(ADMIN, "alice", role="viewer"),
        action="user.update",
        target="alice",
        detail={"role": "viewer"},
    )
    admin_write(
        store,
        lambda: store.create_team(ADMIN, "research"),
        action="team.create",
        target="research",
        detail=None,
    )
    admin_write(
        store,
        lambda: store.add_member(ADMIN, "research", "alice"),
        action="team.add_member",
        target="research",
        detail={"user": "alice"},
    )
    admin_write(
        store,
        lambda: store.remove_member(ADMIN, "research", "alice"),
        action="team.remove_member",
        target="research",
        detail={"user": "alice"},
    )
    key, _ = admin_write(
        store,
        lambda: store.create_key(ADMIN, "alice", name="laptop"),
        action="key.create",
        target=lambda made: made[0].id,
        detail={"user": "alice", "name": "laptop", "expires_at": None},
    )
    new, _ = admin_write(
        store,
        lambda: store.rotate_key(ADMIN, key.id, overlap=30.0),
        action="key.rotate",
        target=key.id,
        detail=lambda made: {"new_key": made[0].id, "overlap": 30.0},
    )
    admin_write(
        store,
        lambda: store.revoke_key(ADMIN, new.id),
        action="key.revoke",
        target=new.id,
        detail={"user": "alice"},
    )
    admin_write(
        store,
        lambda: store.delete_team(ADMIN, "research"),
        action="team.delete",
        target="research",
        detail=None,
    )
    admin_write(
        store,
        lambda: store.delete_principal(ADMIN, "alice"),
        action="user.delete",
        target="alice",
        detail=None,
    )
    assert store.revision() == 1 + 10
    assert len(all_audit(store)) == 10


def test_touch_keys_sets_last_used_without_a_new_revision(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    k1, _ = store.create_key(ADMIN, "alice")
    k2, _ = store.create_key(ADMIN, "alice", name="other")
    k3, _ = store.create_key(ADMIN, "alice", name="unused")
    revision, lines = store.revision(), len(all_audit(store))
    store.touch_keys({k1.id: 1_700_000_000.5, k2.id: 1_700_000_100.25})
    assert store.key(k1.id).last_used_at == 1_700_000_000.5
    assert store.key(k2.id).last_used_at == 1_700_000_100.25
    assert store.key(k3.id).last_used_at is None
    store.touch_keys({k1.id: 1_700_000_200.0})
    assert store.key(k1.id).last_used_at == 1_700_000_200.0
    assert store.key(k2.id).last_used_at == 1_700_000_100.25
    store.touch_keys({})
    assert_nothing_written(store, revision, lines)
    assert store.snapshot().revision == revision


def test_append_audit_does_not_change_the_revision(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    revision = store.revision()
    event = AuditEvent(at=time.time(), actor="alice", action="request.refused", target="/v1/x",
                       outcome="denied", status=403)  # fmt: skip
    assert store.append_audit([event, event]) == 2
    assert store.append_audit([]) == 0
    assert store.revision() == revision
    assert len(all_audit(store)) == 3


def test_failed_writes_do_not_change_the_revision(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_team(ADMIN, "research")
    revision, lines = store.revision(), len(all_audit(store))
    failing: list[Callable[[], object]] = [
        lambda: store.create_principal(ADMIN, "alice", role="user"),
        lambda: store.create_team(ADMIN, "research"),
        lambda: store.update_principal(ADMIN, "nobody", role="user"),
        lambda: store.delete_principal(ADMIN, "nobody"),
        lambda: store.add_member(ADMIN, "research", "nobody"),
        lambda: store.add_member(ADMIN, "nothing", "alice"),
        lambda: store.remove_member(ADMIN, "research", "alice"),
        lambda: store.delete_team(ADMIN, "nothing"),
        lambda: store.create_key(ADMIN, "nobody"),
        lambda: store.revoke_key(ADMIN, "key_doesnotexist0000"),
        lambda: store.rotate_key(ADMIN, "key_doesnotexist0000", overlap=0),
    ]
    for operation in failing:
        with pytest.raises((ConflictError, NotFoundError)):
            operation()
    assert_nothing_written(store, revision, lines)
    assert store.team("research").members == ()


# -- not found ----------------------------------------------------------------------------


NOT_FOUND: list[tuple[str, Callable[[Store], object]]] = [
    ("principal", lambda s: s.principal("nobody")),
    ("update_principal", lambda s: s.update_principal(ADMIN, "nobody", disabled=True)),
    ("delete_principal", lambda s: s.delete_principal(ADMIN, "nobody")),
    ("team", lambda s: s.team("nothing")),
    ("delete_team", lambda s: s.delete_team(ADMIN, "nothing")),
    ("add_member-team", lambda s: s.add_member(ADMIN, "nothing", "alice")),
    ("add_member-user", lambda s: s.add_member(ADMIN, "research", "nobody")),
    ("remove_member-team", lambda s: s.remove_member(ADMIN, "nothing", "alice")),
    ("remove_member-user", lambda s: s.remove_member(ADMIN, "research", "nobody")),
    ("create_key", lambda s: s.create_key(ADMIN, "nobody")),
    ("keys", lambda s: s.keys("nobody")),
    ("key", lambda s: s.key("key_doesnotexist0000")),
    ("revoke_key", lambda s: s.revoke_key(ADMIN, "key_doesnotexist0000")),
    ("rotate_key", lambda s: s.rotate_key(ADMIN, "key_doesnotexist0000", overlap=60)),
    ("principal-injection", lambda s: s.principal("' OR '1'='1")),
    ("key-injection", lambda s: s.key("' OR '1'='1")),
]


@pytest.mark.parametrize(
    "operation", [case for _, case in NOT_FOUND], ids=[name for name, _ in NOT_FOUND]
)
def test_unknown_names_and_ids_are_not_found(
    store: Store, operation: Callable[[Store], object]
) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_team(ADMIN, "research")
    store.create_key(ADMIN, "alice")
    revision, lines = store.revision(), len(all_audit(store))
    with pytest.raises(NotFoundError):
        operation(store)
    assert_nothing_written(store, revision, lines)


# -- audit trail --------------------------------------------------------------------------


def test_append_audit_round_trips_an_event(store: Store) -> None:
    event = AuditEvent(
        at=1_700_000_000.125,
        actor="mallory",
        action="request.refused",
        target="/v1/chat/completions",
        outcome="denied",
        status=403,
        credential="key_abc",
        address="203.0.113.7",
        request_id="req-42",
        detail={"model": "llama-3", "reason": "model", "n": 3, "nested": {"a": [1, 2]}},
    )
    plain = AuditEvent(at=1_700_000_001.0, actor="-", action="auth.failed", target="-",
                       outcome="failed")  # fmt: skip
    assert store.append_audit([event, plain]) == 2
    found = all_audit(store)
    assert len(found) == 2
    assert found[1].id is not None and found[0].id is not None
    assert found[0].id > found[1].id
    assert found[1] == replace(event, id=found[1].id)
    assert found[0] == replace(plain, id=found[0].id)
    assert found[0].detail is None
    assert found[1].public()["detail"] == event.detail


def test_audit_filters(store: Store) -> None:
    def ev(at: float, actor: str, action: str, outcome: str = "ok") -> AuditEvent:
        return AuditEvent(at=at, actor=actor, action=action, target="t", outcome=outcome)

    store.append_audit(
        [
            ev(100.0, "alice", "key.create"),
            ev(200.0, "bob", "key.revoke"),
            ev(300.0, "alice", "user.create"),
            ev(400.0, "carol", "keyring.open", "failed"),
            ev(500.0, "bob", "key.rotate", "denied"),
            ev(600.0, "alice", "a_b.x"),
            ev(700.0, "alice", "aXb.x"),
            ev(800.0, "bob", "key"),
        ]
    )

    def actions(**query: Any) -> list[str]:
        return [e.action for e in store.audit(AuditQuery(**query))]

    everything = actions()
    assert everything == [
        "key",
        "aXb.x",
        "a_b.x",
        "key.rotate",
        "keyring.open",
        "user.create",
        "key.revoke",
        "key.create",
    ]  # newest first
    assert actions(action="key.revoke") == ["key.revoke"]
    assert actions(action="key") == ["key"]
    assert actions(action="key.") == ["key.rotate", "key.revoke", "key.create"]
    assert actions(action="user.") == ["user.create"]
    assert actions(action="a_b.") == ["a_b.x"]  # "_" is not a wildcard
    assert actions(action="key.re") == []  # a prefix must end with "."
    assert actions(action="%.") == []
    assert actions(actor="alice") == ["aXb.x", "a_b.x", "user.create", "key.create"]
    assert actions(actor="nobody") == []
    assert actions(outcome="denied") == ["key.rotate"]
    assert actions(outcome="failed") == ["keyring.open"]
    assert actions(since=200.0, until=400.0) == ["user.create", "key.revoke"]
    assert actions(since=750.0) == ["key"]
    assert actions(until=100.0) == []
    assert actions(until=100.5) == ["key.create"]
    assert actions(actor="bob", action="key.") == ["key.rotate", "key.revoke"]
    assert actions(actor="bob", action="key.", outcome="ok") == ["key.revoke"]
    assert actions(actor="alice", since=300.0, until=700.0) == ["a_b.x", "user.create"]
    assert actions(limit=3) == everything[:3]
    assert actions(limit=1, action="key.") == ["key.rotate"]
    assert actions(limit=10_000) == everything


def test_admin_writes_are_audited_newest_first(store: Store) -> None:
    store.create_principal(ADMIN, "alice", role="user")
    store.create_team(OTHER, "research")
    key, _ = store.create_key(ADMIN, "alice")
    store.revoke_key(OTHER, key.id)
    found = all_audit(store)
    assert [(e.actor, e.action, e.target, e.outcome) for e in found] == [
        ("ops-bot", "key.revoke", key.id, "ok"),
        ("root-admin", "key.create", key.id, "ok"),
        ("ops-bot", "team.create", "research", "ok"),
        ("root-admin", "user.create", "alice", "ok"),
    ]
    assert [e.at for e in found] == sorted((e.at for e in found), reverse=True)
    assert [e.action for e in store.audit(AuditQuery(actor="ops-bot"))] == [
        "key.revoke",
        "team.create",
    ]
    assert [e.action for e in store.audit(AuditQuery(action="key."))] == [
        "key.revoke",
        "key.create",
    ]
