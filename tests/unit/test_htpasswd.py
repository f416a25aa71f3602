"""htpasswd files written by Apache's own ``htpasswd``, in each format it offers."""

from __future__ import annotations

import base64
import logging
import subprocess
import time
from pathlib import Path

import pytest

from bastion.auth.htpasswd import HashKind, HtpasswdAuthenticator, hash_kind, parse_htpasswd
from bastion.errors import AuthenticationError, ConfigError
from bastion.settings import HtpasswdSettings

FORMATS = {"bcrypt": ["-B", "-C", "5"], "apr1": ["-m"], "sha": ["-s"]}


def htpasswd(path: Path, user: str, password: str, fmt: str = "bcrypt") -> None:
    create = [] if path.exists() else ["-c"]
    subprocess.run(
        ["htpasswd", *create, "-b", *FORMATS[fmt], str(path), user, password],
        check=True,
        capture_output=True,
    )


def basic(user: str, password: str | bytes) -> bytes:
    raw = password.encode() if isinstance(password, str) else password
    return base64.b64encode(user.encode() + b":" + raw)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    for fmt in FORMATS:
        htpasswd(path, f"user-{fmt}", f"pw-{fmt}", fmt)
    return path


def make(path: Path, **settings: object) -> HtpasswdAuthenticator:
    return HtpasswdAuthenticator(HtpasswdSettings(file=path, **settings))  # type: ignore[arg-type]


def test_apache_hashes_are_recognised(users: Path) -> None:
    entries, problems = parse_htpasswd(users.read_text())
    assert problems == []
    assert {u: e.kind for u, e in entries.items()} == {
        "user-bcrypt": HashKind.BCRYPT,
        "user-apr1": HashKind.APR1,
        "user-sha": HashKind.SHA1,
    }
    assert entries["user-bcrypt"].stored.startswith(b"$2y$05$")


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_each_format_accepts_the_right_password_only(users: Path, fmt: str) -> None:
    auth = make(users)
    identity = await auth.authenticate(b"basic", basic(f"user-{fmt}", f"pw-{fmt}"))
    assert identity is not None
    assert identity.principal == f"user-{fmt}"
    assert identity.method == "basic"
    with pytest.raises(AuthenticationError):
        await auth.authenticate(b"basic", basic(f"user-{fmt}", "wrong"))


async def test_weak_formats_can_be_refused(users: Path, caplog: pytest.LogCaptureFixture) -> None:
    auth = make(users, refuse_weak=True)
    assert "refusing 2 users with weak hashes" in caplog.text
    for fmt in ("apr1", "sha"):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(b"basic", basic(f"user-{fmt}", f"pw-{fmt}"))
    assert await auth.authenticate(b"basic", basic("user-bcrypt", "pw-bcrypt")) is not None


def test_weak_formats_are_warned_about(users: Path, caplog: pytest.LogCaptureFixture) -> None:
    make(users)
    assert "2 users have weak hashes" in caplog.text


async def test_a_verified_credential_is_cached(users: Path) -> None:
    auth = make(users)
    credential = basic("user-bcrypt", "pw-bcrypt")
    for _ in range(5):
        assert await auth.authenticate(b"basic", credential) is not None
    assert auth.verifications == 1
    for _ in range(2):  # failures are never cached
        with pytest.raises(AuthenticationError):
            await auth.authenticate(b"basic", basic("user-bcrypt", "pw-bcryp"))
    assert auth.verifications == 3


async def test_cache_can_be_turned_off(users: Path) -> None:
    auth = make(users, cache_ttl=0)
    for _ in range(3):
        await auth.authenticate(b"basic", basic("user-sha", "pw-sha"))
    assert auth.verifications == 3


async def test_file_changes_are_picked_up(users: Path) -> None:
    auth = make(users, reload_interval=0.05)
    assert await auth.authenticate(b"basic", basic("user-sha", "pw-sha")) is not None
    with pytest.raises(AuthenticationError):
        await auth.authenticate(b"basic", basic("newcomer", "pw"))
    htpasswd(users, "newcomer", "pw")
    subprocess.run(["htpasswd", "-D", str(users), "user-sha"], check=True, capture_output=True)
    time.sleep(0.1)
    assert await auth.authenticate(b"basic", basic("newcomer", "pw")) is not None
    with pytest.raises(AuthenticationError):  # removed: the cached success is gone too
        await auth.authenticate(b"basic", basic("user-sha", "pw-sha"))


async def test_malformed_lines_are_reported_and_skipped(
    users: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = users.read_text()
    users.write_text(
        "garbage-without-colon\nplain:secret\ncrypt:abJnggxhB/yWI\n"
        + good
        + "user-sha:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n"
    )
    with caplog.at_level(logging.WARNING):
        auth = make(users)
    for line in ("line 1: not 'user:hash'", "line 2: user 'plain'", "line 3: user 'crypt'"):
        assert line in caplog.text
    assert "appears again" in caplog.text
    assert "secret" not in caplog.text
    assert "abJnggxhB" not in caplog.text
    assert len(auth) == 3
    assert await auth.authenticate(b"basic", basic("user-apr1", "pw-apr1")) is not None


async def test_long_bcrypt_passwords_are_refused_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd(path, "long", "x" * 72)
    auth = make(path)
    assert await auth.authenticate(b"basic", basic("long", "x" * 72)) is not None
    with pytest.raises(AuthenticationError, match="72 bytes"):
        await auth.authenticate(b"basic", basic("long", "x" * 73))


@pytest.mark.parametrize(
    "credential",
    [
        b"not base64!",
        base64.b64encode(b"no-colon"),
        base64.b64encode(b":nouser"),
        base64.b64encode(b"a\x00b:pw"),
        base64.b64encode(b"\xff\xfe:pw"),
        b"",
    ],
)
async def test_malformed_credentials_are_refused(users: Path, credential: bytes) -> None:
    with pytest.raises(AuthenticationError):
        await make(users).authenticate(b"basic", credential)


async def test_unknown_user_is_refused_without_a_verification(users: Path) -> None:
    auth = make(users)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(b"basic", basic("nobody", "pw"))
    assert auth.verifications == 0


async def test_roles_and_other_schemes(users: Path) -> None:
    auth = make(users, admins=["user-apr1"])
    admin = await auth.authenticate(b"basic", basic("user-apr1", "pw-apr1"))
    user = await auth.authenticate(b"basic", basic("user-sha", "pw-sha"))
    assert admin is not None and admin.role == "admin"
    assert user is not None and user.role == "user"
    assert await auth.authenticate(b"bearer", b"bst_x") is None


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.htpasswd\.file"):
        make(tmp_path / "missing")


def test_hash_kind_of_unsupported_values() -> None:
    assert hash_kind(b"plain") is None
    assert hash_kind(b"$2y$05$short") is None
    assert hash_kind(b"{SHA}tooshort") is None
