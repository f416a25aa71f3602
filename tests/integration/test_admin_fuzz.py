"""A property-based fuzzer over the admin API of a live gateway, on SQLite and PostgreSQL.

Every operation of the table is called with generated paths, query strings and JSON bodies:
good values (so that requests get past the first check and reach the store) mixed with nulls,
wrong types, huge and non-finite numbers, NUL bytes, long and odd unicode text, broken JSON and
wrong methods. Whatever is sent, the gateway never answers 5xx, every error is the
OpenAI-shaped error body, every success has its operation's declared shape, and the gateway
stays healthy. The examples are derandomized: CI runs the same ones each time.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from bastion.admin.api import OPERATIONS, ROUTER
from bastion.admin.operations import (
    Choice,
    Choices,
    Flag,
    Integer,
    Number,
    Operation,
    Param,
    Strings,
)
from tests.support.admin import STORES, admin_call, store_gateway
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys

KEYS = Keys()
EXAMPLES = 60
"""Per operation and store: about 2,500 requests, 20 s for the file on two busy cores."""
USERS = ["bob", "carol", "dave", "erin"]
"""Made by the fixture: the fuzzer deletes some, and may make them again."""
NAMES = [*USERS, "ml", "root", "admin", "a.b@c+d-e", "user"]
"""Names that exist, or may: users, the fixture's team, roles."""
KEY_IDS: list[str] = []
"""The fixture's key (the fuzzer may revoke or rotate it)."""
LISTS = {
    "models": ["llama-*", "test-model", "*"],
    "routes": ["chat", "inference", "models", "admin"],
    "networks": ["10.0.0.0/8", "::1/128", "127.0.0.1/32"],
}
"""Good values of each list a key may be limited by."""


@pytest.fixture(scope="module", params=STORES)
def gateway(
    request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with store_gateway(request, upstream.url, KEYS, tmp_path_factory.mktemp("fuzz")) as process:
        for user in USERS:
            assert admin_call(process, KEYS.admin, "POST", "users", {"name": user})[0] == 201
        assert admin_call(process, KEYS.admin, "POST", "teams", {"name": "ml"})[0] == 201
        status, issued = admin_call(process, KEYS.admin, "POST", "keys", {"user": "bob"})
        assert status == 201
        KEY_IDS[:] = [issued["key"]["id"]]
        yield process


# -- what to send --------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    ["", "💥", "é", "\u202e", "\ufeff", "' OR '1'='1", "%00", "..", "key.", "*", "x" * 129,
     "x" * 501, "10.0.0.0/8", "llama-*", "a,b", "null", "[]"]
) | st.sampled_from(["\x00", "a\x00b", "bob\x00", "key.\x00", "\x00" * 3])  # fmt: skip
"""Text that is odd; a NUL byte in half of it (PostgreSQL refuses those)."""
FRESH = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
"""Names that may not exist yet: creating them succeeds."""
TEXT = st.one_of(ODD_TEXT, FRESH, st.text(max_size=12), st.text(min_size=100, max_size=600))
NUMBER_WORDS = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e23", "-1e23", "-1", "-0",
     "0x10", "1_000", " 7 ", "9" * 5000, "true", "1e308", "5e-324", "99999999999999999999999"]
)  # fmt: skip
JSON_NUMBERS = st.sampled_from(
    ["1e400", "-1e400", "1e23", "-1e23", "NaN", "Infinity", "-0", "1" * 30, "1e-400", "-1"]
)
"""Number tokens as a body may carry them, some of which no JSON library writes."""
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
).map(json.dumps)  # fmt: skip


def likely(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``usual``: a request must get past its first check to reach the store."""
    return st.integers(0, 9).flatmap(lambda n: usual if n < 7 else odd)


def good(param: Param) -> st.SearchStrategy[Any]:
    """Values the parameter's kind accepts (the service or the store may still refuse)."""
    kind = param.kind
    if isinstance(kind, Choice):
        return st.sampled_from(kind.values)
    if isinstance(kind, Choices):
        return st.lists(st.sampled_from(kind.values), min_size=1, unique=True).map(",".join)
    if isinstance(kind, Flag):
        return st.booleans()
    if isinstance(kind, Number):
        return st.floats(kind.minimum, kind.maximum)
    if isinstance(kind, Integer):
        return st.integers(kind.minimum, kind.maximum)
    if isinstance(kind, Strings):
        return st.lists(st.sampled_from(LISTS[param.name]), max_size=3)
    if param.name == "id":
        return st.sampled_from(KEY_IDS) | FRESH.map("key_".__add__)
    return st.sampled_from(NAMES) | FRESH


def bad(param: Param) -> st.SearchStrategy[str]:
    """Values as sent (JSON text in a body, text elsewhere) that the kind should refuse, or
    that only just pass."""
    if param.where == "body":
        return ODD_TEXT.map(json.dumps) | ANY_JSON | JSON_NUMBERS
    if isinstance(param.kind, Number | Integer):
        return NUMBER_WORDS
    return ODD_TEXT | TEXT


def value_of(param: Param) -> st.SearchStrategy[str]:
    """As sent: JSON text for a body field, text for a path segment or a query parameter."""
    return likely(good(param).map(_json if param.where == "body" else _text), bad(param))


def _json(value: Any) -> str:
    return json.dumps(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@st.composite
def requests(draw: st.DrawFn, op: Operation[Any]) -> tuple[str, str, bytes]:
    """One request for ``op`` (or near it): method, target (path and query) and body."""
    method = draw(likely(st.just(op.method), st.sampled_from(["GET", "POST", "PATCH", "FOO"])))
    values = {p.name: draw(value_of(p)) for p in op.params if p.where == "path"}
    segments = [values[s[1:-1]] if s.startswith("{") else s for s in op.segments]
    segments += draw(likely(st.just([]), st.lists(TEXT, min_size=1, max_size=2)))
    pairs = [
        (p.name, draw(value_of(p))) for p in op.params if p.where == "query" and draw(st.booleans())
    ]
    pairs += draw(likely(st.just([]), st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=2)))
    quoted = (urllib.parse.quote(segment, safe="") for segment in segments)
    target = "/admin/v1/" + "/".join(quoted) + "?" + urllib.parse.urlencode(pairs)
    fields = [
        f"{json.dumps(p.name)}: {draw(value_of(p))}"
        for p in op.params
        if p.where == "body"
        and draw(likely(st.just(True), st.just(False)) if p.required else st.booleans())
    ]
    content = ("{" + ", ".join(fields) + "}").encode()
    odd = st.sampled_from([b"", b"[]", b"null", b"{", b'"x"', b"\xff\xfe", b'{"a": 1e400}'])
    return method, target, draw(likely(st.just(content), odd | ANY_JSON.map(str.encode)))


# -- what must hold ------------------------------------------------------------------------------


def send(gateway: GatewayProcess, method: str, target: str, content: bytes) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(*gateway.host_port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {KEYS.admin}", "Content-Type": "application/json"}
        connection.request(method, target, body=content, headers=headers)
        response = connection.getresponse()
        assert response.getheader("content-type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def assert_answer(method: str, target: str, status: int, answer: Any) -> None:
    assert status < 500, (status, answer)
    if status >= 400:
        assert set(answer) == {"error"}, answer
        error = answer["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
        assert error["param"] is None or isinstance(error["param"], str)
        assert error["code"] is None or isinstance(error["code"], str)
        return
    operation, _ = ROUTER.find(method, target.split("?", 1)[0].encode())  # a success is an op's
    assert status == operation.status
    assert TypeAdapter(operation.returns).validate_python(answer, strict=True) == answer


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@pytest.mark.parametrize("name", [op.name for op in OPERATIONS])
@given(data=st.data())
def test_no_request_makes_the_admin_api_fail(
    gateway: GatewayProcess, name: str, data: st.DataObject
) -> None:
    method, target, content = data.draw(requests(ROUTER.by_name[name]))
    status, answer = send(gateway, method, target, content)
    event(f"status {status}")  # pytest --hypothesis-show-statistics shows how deep it went
    assert_answer(method, target, status, answer)


def test_the_gateway_is_healthy_after_the_fuzzing(gateway: GatewayProcess) -> None:
    assert gateway.proc.poll() is None
    with urllib.request.urlopen(gateway.url + "/health", timeout=5) as health:
        assert health.status == 200
    status, whoami = admin_call(gateway, KEYS.admin, "GET", "whoami")
    assert (status, whoami["principal"]) == (200, "root")
    assert admin_call(gateway, KEYS.admin, "GET", "users")[0] == 200
    assert "Traceback" not in gateway.logs
