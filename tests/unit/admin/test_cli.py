"""``bastion users|teams|roles|keys|audit``, run locally and through a gateway's admin API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bastion.admin.cli import parse_duration, parse_since, parse_when
from bastion.auth.apikeys import display_prefix, generate_key, has_valid_checksum, hash_key
from bastion.cli import main
from bastion.errors import BadRequestError
from tests.support.gateway import GatewayProcess

Capsys = pytest.CaptureFixture[str]


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_URL", raising=False)
    monkeypatch.delenv("BASTION_API_KEY", raising=False)
    monkeypatch.setenv("LOGNAME", "tester")  # getpass.getuser() reads it first


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bastion.yaml"
    settings = {
        "server": {"state_dir": str(tmp_path / "state")},
        "roles": {"llama-user": {"routes": ["inference"], "models": ["llama-*"]}},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


class Cli:
    """Runs ``bastion ...`` on a store, returning (exit code, stdout, stderr): locally (the
    store named by the config) or remotely (through a gateway serving that config)."""

    def __init__(self, target: list[str], capsys: Capsys, actor: str) -> None:
        self.target = target
        self.capsys = capsys
        self.actor = actor
        """Who the audit trail names: the local operator, or the gateway's admin key."""

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([*argv, *self.target])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def ok(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert (code, err) == (0, ""), err
        return out

    def json(self, *argv: str) -> Any:
        return json.loads(self.ok(*argv, "--json"))

    def error(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 2
        assert out == ""
        assert err.startswith("bastion: error: ")
        assert err.endswith("\n") and err.count("\n") == 1, err
        return err


@pytest.fixture(params=["local", "remote"])
def cli(
    request: pytest.FixtureRequest, config: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cli]:
    """Each case runs twice: on the store itself, and through a gateway's admin API."""
    if request.param == "local":
        yield Cli(["--config", str(config)], capsys, "local:tester")
        return
    settings = yaml.safe_load(config.read_text())
    key = generate_key()
    settings["server"]["host"] = "127.0.0.1"
    settings["models"] = [{"name": "m", "upstreams": [{"url": "http://127.0.0.1:9"}]}]
    settings["auth"] = {"api_keys": [{"name": "root", "hash": hash_key(key), "role": "admin"}]}
    monkeypatch.setenv("BASTION_API_KEY", key)
    workdir = config.parent / "gateway"
    workdir.mkdir()
    gateway = GatewayProcess(settings, workdir)
    try:
        yield Cli(["--url", gateway.url], capsys, "root")
    finally:
        gateway.stop()


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


# -- users and teams --------------------------------------------------------------------------


def test_users_create_and_list(cli: Cli, tmp_path: Path) -> None:
    out = cli.ok("users", "create", "bob", "--role", "user")
    assert (tmp_path / "state" / "bastion.db").is_file()  # the SQLite store in the state dir
    assert rows(out)[0][:3] == ["NAME", "KIND", "ROLE"]
    assert rows(out)[1][:5] == ["bob", "user", "user", "-", "enabled"]
    cli.ok("users", "create", "ci", "--role", "llama-user", "--service", "--description", "CI")

    listed = cli.json("users", "list")
    assert [u["name"] for u in listed] == ["bob", "ci"]
    bob, ci = listed
    assert (bob["role"], bob["kind"], bob["disabled"], bob["teams"]) == ("user", "user", False, [])
    assert bob["created_by"] == cli.actor
    assert (ci["role"], ci["kind"], ci["description"]) == ("llama-user", "service", "CI")

    table = rows(cli.ok("users", "list"))
    assert table[0] == ["NAME", "KIND", "ROLE", "TEAMS", "STATE", "CREATED"]
    assert table[1][:5] == ["bob", "user", "user", "-", "enabled"]
    assert table[2][:5] == ["ci", "service", "llama-user", "-", "enabled"]
    assert len(table) == 3


def test_users_update_and_delete(cli: Cli) -> None:
    cli.ok("users", "create", "bob")
    assert cli.json("users", "show", "bob")["role"] == "user"  # the default role
    updated = cli.json("users", "update", "bob", "--role", "viewer", "--disable")
    assert (updated["role"], updated["disabled"]) == ("viewer", True)
    assert rows(cli.ok("users", "show", "bob"))[1][4] == "disabled"
    assert cli.json("users", "update", "bob", "--enable")["disabled"] is False
    assert cli.ok("users", "delete", "bob") == "deleted bob\n"
    assert cli.ok("users", "list") == "no users\n"
    assert "No user named 'bob'" in cli.error("users", "show", "bob")


def test_teams(cli: Cli) -> None:
    cli.ok("users", "create", "bob", "--role", "user")
    cli.ok("teams", "create", "ml", "--description", "Machine learning")
    team = cli.json("teams", "add", "ml", "bob")
    assert team["members"] == ["bob"]
    assert cli.json("users", "show", "bob")["teams"] == ["ml"]
    assert rows(cli.ok("users", "list"))[1][3] == "ml"
    [listed] = cli.json("teams", "list")
    assert (listed["name"], listed["members"], listed["description"]) == (
        "ml",
        ["bob"],
        "Machine learning",
    )
    table = rows(cli.ok("teams", "show", "ml"))
    assert table[0] == ["NAME", "MEMBERS", "DESCRIPTION"]
    assert table[1] == ["ml", "bob", "Machine", "learning"]
    assert cli.json("teams", "remove", "ml", "bob")["members"] == []
    assert cli.json("users", "show", "bob")["teams"] == []
    assert cli.ok("teams", "delete", "ml") == "deleted ml\n"
    assert cli.ok("teams", "list") == "no teams\n"


def test_roles_list(cli: Cli) -> None:
    roles = {r["name"]: r for r in cli.json("roles", "list")}
    assert set(roles) == {"admin", "operator", "user", "viewer", "console-viewer", "llama-user"}
    assert roles["admin"]["builtin"] is True
    assert roles["admin"]["routes"] == ["*"]
    assert roles["viewer"]["routes"] == ["models"]
    assert roles["llama-user"]["builtin"] is False
    assert roles["llama-user"]["models"] == ["llama-*"]

    table = rows(cli.ok("roles", "list"))
    assert table[0] == ["NAME", "ROUTES", "MODELS", "NETWORKS"]
    names = [row[0] for row in table[1:]]
    assert names == ["admin", "console-viewer", "llama-user", "operator", "user", "viewer"]
    assert table[3][:2] == ["llama-user", "(custom)"]


# -- keys -------------------------------------------------------------------------------------


def test_key_lifecycle(cli: Cli) -> None:
    cli.ok("users", "create", "bob", "--role", "user")

    issued = cli.json("keys", "create", "--user", "bob", "--models", "m1", "--expires", "30d")
    secret, key = issued["secret"], issued["key"]
    assert has_valid_checksum(secret.encode())
    assert key["prefix"] == display_prefix(secret)
    assert (key["user"], key["name"], key["state"], key["models"]) == ("bob", "default", "active",
                                                                       ["m1"])  # fmt: skip
    assert key["routes"] is None and key["networks"] is None
    assert key["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=60)
    assert key["created_by"] == cli.actor

    listed = cli.json("keys", "list")
    assert [k["id"] for k in listed] == [key["id"]]
    assert "secret" not in listed[0]
    assert listed[0]["prefix"] == key["prefix"]
    assert cli.json("keys", "list", "--user", "bob") == listed
    table = cli.ok("keys", "list")
    assert rows(table)[0][:5] == ["ID", "USER", "NAME", "PREFIX", "STATE"]
    assert rows(table)[1][:5] == [key["id"], "bob", "default", key["prefix"] + "…", "active"]

    rotated = cli.json("keys", "rotate", key["id"], "--overlap", "10m")
    new_secret, new = rotated["secret"], rotated["key"]
    assert has_valid_checksum(new_secret.encode()) and new_secret != secret
    assert new["id"] != key["id"]
    assert new["rotated_from"] == key["id"]
    assert new["models"] == ["m1"]
    assert new["expires_at"] == key["expires_at"]
    old = cli.json("keys", "show", key["id"])
    assert old["state"] == "active"
    assert old["expires_at"] == pytest.approx(time.time() + 600, abs=60)

    out = cli.ok("keys", "revoke", new["id"])
    assert rows(out)[1][0] == new["id"]
    assert rows(out)[1][4] == "revoked"
    assert [k["id"] for k in cli.json("keys", "list")] == [key["id"]]
    states = {k["id"]: k["state"] for k in cli.json("keys", "list", "--all")}
    assert states == {key["id"]: "active", new["id"]: "revoked"}

    audit = cli.json("audit", "--action", "key.")
    assert [(e["action"], e["target"]) for e in audit] == [
        ("key.revoke", new["id"]),
        ("key.rotate", key["id"]),
        ("key.create", key["id"]),
    ]
    assert {e["actor"] for e in audit} == {cli.actor}
    assert {e["outcome"] for e in audit} == {"ok"}
    assert [e["action"] for e in cli.json("audit", "--action", "user.create")] == ["user.create"]
    assert len(cli.json("audit")) == 4
    assert len(cli.json("audit", "--limit", "2")) == 2
    assert cli.json("audit", "--actor", "someone-else") == []
    assert cli.json("audit", "--since", "1h", "--outcome", "ok") == cli.json("audit")
    assert cli.json("audit", "--until", "1h") == []
    assert rows(cli.ok("audit", "--action", "key.create"))[1][2:6] == [
        cli.actor,
        "key.create",
        key["id"],
        "ok",
    ]

    # The plaintext keys are shown once, when issued, and never again.
    for argv in (
        ("keys", "list", "--all"),
        ("keys", "list", "--all", "--json"),
        ("keys", "show", key["id"]),
        ("keys", "show", key["id"], "--json"),
        ("audit",),
        ("audit", "--json"),
    ):
        out = cli.ok(*argv)
        assert secret not in out
        assert new_secret not in out


def test_keys_create_prints_the_secret_once_for_people(cli: Cli) -> None:
    cli.ok("users", "create", "bob")
    out = cli.ok("keys", "create", "--user", "bob", "--routes", "chat", "--name", "laptop")
    secret = next(word for word in out.split() if word.startswith("bst_"))
    assert has_valid_checksum(secret.encode())
    assert "shown only now" in out
    [key] = cli.json("keys", "list")
    assert (key["name"], key["routes"], key["expires_at"]) == ("laptop", ["chat"], None)
    assert key["prefix"] == display_prefix(secret)


def test_errors_exit_2_with_one_line(cli: Cli) -> None:
    assert "No user named 'nobody'" in cli.error("keys", "create", "--user", "nobody")
    cli.ok("users", "create", "bob")
    assert "already exists" in cli.error("users", "create", "bob")
    assert "unknown role 'wizard'" in cli.error("users", "create", "alice", "--role", "wizard")
    assert "future" in cli.error("keys", "create", "--user", "bob", "--expires", "2000-01-01")
    assert "not a duration" in cli.error("keys", "create", "--user", "bob", "--expires", "soon")
    assert "unknown permission 'fly'" in cli.error("keys", "create", "--user", "bob",
                                                   "--routes", "fly")  # fmt: skip
    assert cli.error("keys", "create", "--user", "bob", "--networks", "not-a-cidr")
    assert "No key with id" in cli.error("keys", "revoke", "key_missing")
    assert cli.json("keys", "list", "--all") == []
    issued = cli.json("keys", "create", "--user", "bob")
    assert "overlap" in cli.error("keys", "rotate", issued["key"]["id"], "--overlap", "31d")
    assert [u["name"] for u in cli.json("users", "list")] == ["bob"]


def test_a_disabled_store_is_an_error(tmp_path: Path, capsys: Capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"server": {"state_dir": str(tmp_path)}, "store": {
        "enabled": False}}))  # fmt: skip
    assert main(["users", "list", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bastion: error: store.enabled")
    assert not (tmp_path / "bastion.db").exists()


# -- remote -----------------------------------------------------------------------------------


def test_remote_needs_a_key(capsys: Capsys) -> None:
    assert main(["users", "list", "--url", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bastion: error: ")
    assert "BASTION_API_KEY" in err


def test_remote_key_file_must_be_readable(tmp_path: Path, capsys: Capsys) -> None:
    missing = tmp_path / "nope"
    assert main(["users", "list", "--url", "http://127.0.0.1:1", "--key-file", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"bastion: error: cannot read {missing}")


def test_remote_unreachable(monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    monkeypatch.setenv("BASTION_API_KEY", "bst_notarealkey")
    assert main(["users", "list", "--url", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bastion: error: cannot reach")
    assert "bst_notarealkey" not in err


def test_remote_url_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    monkeypatch.setenv("BASTION_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("BASTION_API_KEY", "bst_notarealkey")
    assert main(["roles", "list"]) == 2
    assert capsys.readouterr().err.startswith("bastion: error: cannot reach")


# -- parsing times ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("30d", 2_592_000),
        ("2w", 1_209_600),
        ("45", 45),
        ("0", 0),
        ("1.5h", 5400),
        (" 10m ", 600),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "abc", "10x", "-5m", "1h30m", "10 m", "1e3", "10M"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(BadRequestError, match="not a duration"):
        parse_duration(text)


@pytest.fixture
def _away_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A local zone other than UTC, so that a naive time read as local time shows."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("_away_from_utc")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-02T03:04:05Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02T03:04:05+00:00", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02T03:04:05", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),  # naive: UTC
        ("2030-01-02T05:04:05+02:00", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02", datetime(2030, 1, 2, tzinfo=UTC)),
    ],
)
def test_parse_when_and_since_iso(text: str, expected: datetime) -> None:
    assert parse_when(text) == expected.timestamp()
    assert parse_since(text) == expected.timestamp()


def test_parse_when_is_a_duration_from_now_and_since_one_ago() -> None:
    now = time.time()
    assert parse_when("30d") == pytest.approx(now + 30 * 86400, abs=5)
    assert parse_when("90") == pytest.approx(now + 90, abs=5)
    assert parse_since("1h") == pytest.approx(now - 3600, abs=5)
    assert parse_since("7d") == pytest.approx(now - 7 * 86400, abs=5)


@pytest.mark.parametrize("text", ["tomorrow", "2030-13-01", "1h30m", ""])
def test_parse_when_and_since_reject(text: str) -> None:
    with pytest.raises(BadRequestError):
        parse_when(text)
    with pytest.raises(BadRequestError):
        parse_since(text)
