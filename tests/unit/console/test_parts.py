"""The console's small parts: cross-site checks, cookies, the static files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.console.headers import clear_cookie, cookie, read_cookie
from bastion.console.origin import OriginCheck
from bastion.console.static import StaticFiles
from bastion.errors import PermissionDeniedError

HOST = (b"host", b"gw.example.com:8443")


@pytest.mark.parametrize(
    "headers",
    [
        [HOST, (b"origin", b"https://evil.example")],
        [HOST, (b"origin", b"https://gw.example.com:8443.evil.example")],
        [HOST, (b"origin", b"null")],
        [HOST, (b"origin", b"file://")],
        [HOST, (b"sec-fetch-site", b"cross-site")],
        [HOST, (b"sec-fetch-site", b"same-site")],  # a sibling subdomain is another site here
        [HOST, (b"origin", b"https://gw.example.com:8443"), (b"sec-fetch-site", b"cross-site")],
    ],
)
def test_cross_site_state_changes_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(PermissionDeniedError) as refused:
        OriginCheck()("POST", headers)
    assert refused.value.code == "cross_site"


@pytest.mark.parametrize(
    "headers",
    [
        [HOST],  # curl: no Origin, no Sec-Fetch-Site (CSRF token and SameSite still apply)
        [HOST, (b"origin", b"https://gw.example.com:8443")],
        [HOST, (b"origin", b"HTTPS://GW.example.com:8443"), (b"sec-fetch-site", b"same-origin")],
        [HOST, (b"sec-fetch-site", b"none")],
    ],
)
def test_same_origin_state_changes_pass(headers: list[tuple[bytes, bytes]]) -> None:
    OriginCheck()("DELETE", headers)


def test_the_public_base_is_an_origin_too_and_reads_are_not_checked() -> None:
    behind_proxy = [(b"host", b"10.0.0.5:8080"), (b"origin", b"https://gw.example.com")]
    with pytest.raises(PermissionDeniedError):
        OriginCheck()("POST", behind_proxy)
    OriginCheck("https://gw.example.com")("POST", behind_proxy)
    OriginCheck()("GET", [HOST, (b"sec-fetch-site", b"cross-site")])


def test_cookies_are_http_only_strict_and_secure_under_tls() -> None:
    name, value = cookie("bastion_session", "abc", max_age=60, secure=True)
    assert name == b"set-cookie"
    assert value == b"bastion_session=abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=60; Secure"
    assert b"Secure" not in cookie("s", "v", max_age=1, secure=False)[1]
    assert clear_cookie("s", secure=False)[1] == b"s=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"


def test_read_cookie() -> None:
    headers = [(b"cookie", b"a=1; bastion_session=xyz; c=3"), (b"cookie", b"bastion_session=2nd")]
    assert read_cookie(headers, "bastion_session") == "xyz"
    assert read_cookie(headers, "session") is None  # not a suffix match
    assert read_cookie([(b"cookie", b"x" * 9000 + b"; s=1")], "s") is None  # too long: ignored
    assert read_cookie([(b"cookie", "s=é".encode())], "s") is None


def test_only_known_files_of_the_folder_are_served(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    (tmp_path / "app.js").write_text("export {}")
    (tmp_path / "notes.txt").write_text("not served")
    (tmp_path / ".secret.js").write_text("hidden")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "logo.svg").write_text("<svg/>")
    files = StaticFiles(tmp_path)
    assert files.find("/ui") is files.find("/ui/index.html")
    found = files.find("/ui/app.js")
    assert found is not None and found.content_type == b"text/javascript; charset=utf-8"
    assert files.find("/ui/img/logo.svg") is not None
    for missing in ("/ui/notes.txt", "/ui/.secret.js", "/ui/img", "/ui/../index.html", "/"):
        assert files.find(missing) is None
    assert len(files) == 4


def test_the_package_ships_an_index() -> None:
    index = StaticFiles().find("/ui")
    assert index is not None and index.content_type.startswith(b"text/html")
