"""Bad input to the admin API is refused with 400, on SQLite and PostgreSQL alike.

Each case here once answered 500 (an unchecked ``null``, a NaN, a repeated group), 200 (a NUL
byte or an unknown word that SQLite took), or, on PostgreSQL only, 503 ``store_unavailable``
carrying the database's own message (a NUL byte in text, a time too large for a ``bigint``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.admin import STORES, admin_call, store_gateway
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys

KEYS = Keys()


@pytest.fixture(scope="module", params=STORES)
def gateway(
    request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with store_gateway(request, upstream.url, KEYS, tmp_path_factory.mktemp("input")) as process:
        status, body = call(process, "POST", "users", {"name": "bob"})
        assert status == 201, body
        yield process


def call(gateway: GatewayProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return admin_call(gateway, KEYS.admin, method, path, body)


def assert_refused(answer: tuple[int, Any], param: str) -> None:
    status, body = answer
    assert status == 400, body
    error = body["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error
    assert "store" not in error["message"], error  # never the database's own words


def test_null_is_the_default(gateway: GatewayProcess) -> None:
    status, user = call(gateway, "POST", "users", {"name": "nul", "role": None, "kind": None})
    assert status == 201, user
    assert (user["role"], user["kind"]) == ("user", "user")
    status, issued = call(gateway, "POST", "keys", {"user": "nul", "name": None})
    assert status == 201, issued
    assert issued["key"]["name"] == "default"
    assert call(gateway, "DELETE", "users/nul")[0] == 200
    assert_refused(call(gateway, "POST", "keys", {"user": None}), "user")  # required


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "n1", "kind": "robot"}, "kind"),
        ({"name": "n2", "kind": 1}, "kind"),
        ({"name": "n3", "description": "a\x00b"}, "description"),
        ({"name": "n4", "role": "user\x00"}, "role"),
        ({"name": "n5", "description": "x" * 501}, "description"),
        ({"name": "n6", "role": ["user"]}, "role"),
    ],
)
def test_bad_user_fields_are_refused(gateway: GatewayProcess, body: Any, param: str) -> None:
    assert_refused(call(gateway, "POST", "users", body), param)
    assert call(gateway, "GET", f"users/{body['name']}")[0] == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"user": "bob\x00"}, "user"),
        ({"user": "bob", "name": "k\x00"}, "name"),
        ({"user": "bob", "models": ["a\x00"]}, "models"),
        ({"user": "bob", "networks": ["10.0.0.0/8\x00"]}, "networks"),
        ({"user": "bob", "routes": ["chat"] * 101}, "routes"),
    ],
)
def test_bad_key_fields_are_refused(gateway: GatewayProcess, body: Any, param: str) -> None:
    assert_refused(call(gateway, "POST", "keys", body), param)


def test_a_nul_in_an_update_is_refused(gateway: GatewayProcess) -> None:
    assert_refused(call(gateway, "PATCH", "users/bob", {"description": "\x00"}), "description")
    assert_refused(call(gateway, "PATCH", "users/bob", {"disabled": "yes"}), "disabled")
    assert_refused(call(gateway, "POST", "teams", {"name": "t", "description": "\x00"}),
                   "description")  # fmt: skip
    assert_refused(call(gateway, "GET", "users/" + "x" * 129), "name")


@pytest.mark.parametrize("operation", ["audit", "usage"])
@pytest.mark.parametrize("param", ["since", "until"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "1e23", "-1e23"])
def test_times_must_be_finite_and_sane(
    gateway: GatewayProcess, operation: str, param: str, value: str
) -> None:
    assert_refused(call(gateway, "GET", f"{operation}?{param}={value}"), param)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("usage?by=user,user", "by"),
        ("usage?by=user,nobody", "by"),
        ("usage?period=week", "period"),
        ("usage?user=%00", "user"),
        ("usage?model=m%00", "model"),
        ("audit?actor=%00", "actor"),
        ("audit?action=key.%00", "action"),
        ("audit?outcome=maybe", "outcome"),
        ("audit?limit=1e3", "limit"),
        ("audit?limit=99999999999999999999999", "limit"),
        ("audit?limit=0", "limit"),
        ("usage?by=,", "by"),
        ("keys?user=%00", "user"),
        ("keys?include_revoked=perhaps", "include_revoked"),
    ],
)
def test_bad_query_parameters_are_refused(gateway: GatewayProcess, query: str, param: str) -> None:
    assert_refused(call(gateway, "GET", query), param)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("keys", {"user": "bob", "expires_in": 1e308}, "expires_in"),
        ("keys", {"user": "bob", "expires_at": 1e300}, "expires_at"),
        ("keys", {"user": "bob", "expires_at": -1}, "expires_at"),
        ("keys/key_x/rotate", {"overlap": -1}, "overlap"),
        ("keys/key_x/rotate", {"overlap": 1e23}, "overlap"),
    ],
)
def test_numbers_out_of_range_are_refused(
    gateway: GatewayProcess, path: str, body: Any, param: str
) -> None:
    assert_refused(call(gateway, "POST", path, body), param)


def test_an_empty_query_parameter_is_not_given(gateway: GatewayProcess) -> None:
    status, report = call(gateway, "GET", "usage?by=&period=&since=&until=&user=")
    assert status == 200, report
    status, trail = call(gateway, "GET", "audit?since=&limit=&outcome=&action=user.create")
    assert status == 200, trail
    assert trail["data"][-1]["target"] == "bob"  # the oldest: the fixture's


def test_the_gateway_is_still_healthy(gateway: GatewayProcess) -> None:
    status, users = call(gateway, "GET", "users")
    assert status == 200
    assert [u["name"] for u in users["data"]] == ["bob"]
