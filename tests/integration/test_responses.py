"""Stored responses through a real gateway: only their creator reaches them, on the upstream
that keeps them; the official client as the caller, the fake upstream's vLLM-like store."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import orjson
import psycopg
import pytest

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.clients import openai_client
from tests.support.databases import reset_postgres
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

KEYS = Keys()
BOB = generate_key()


def _config(*urls: str, **overrides: Any) -> dict[str, Any]:
    config = base_config(urls[0], KEYS, **overrides)
    config["models"][0]["upstreams"] = [
        {"url": u, "api_key": {"env": "TEST_UPSTREAM_KEY"}} for u in urls
    ]
    config["auth"]["api_keys"].append({"name": "bob", "hash": hash_key(BOB), "role": "user"})
    # the administrator may name engine request ids elsewhere, never a response's
    config["fields"] = {"allow": {"admin": ["request_id"]}}
    return config


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with running_gateway(
        _config(upstream.url), tmp_path_factory.mktemp("state"), UPSTREAM_KEY
    ) as process:
        yield process


def _clients(gateway: GatewayProcess) -> tuple[openai.OpenAI, openai.OpenAI, openai.OpenAI]:
    """alice (the creator), bob (another user) and root (an administrator)."""
    return (
        openai_client(gateway.url, KEYS.user),
        openai_client(gateway.url, BOB),
        openai_client(gateway.url, KEYS.admin),
    )


def _raw(gateway: GatewayProcess, method: str, path: str, key: str) -> tuple[int, dict[str, Any]]:
    host, port = gateway.host_port
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        return response.status, orjson.loads(response.read() or b"{}")
    finally:
        conn.close()


def _seen(upstream: FakeUpstream) -> list[tuple[str, str]]:
    return [(s.method, s.path) for s in upstream.seen]


def test_the_owner_retrieves_cancels_lists_and_deletes(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    alice, _, _ = _clients(gateway)
    created = alice.responses.create(model="test-model", input="hi", background=True)
    assert created.status == "queued"
    rid = created.id
    got = alice.responses.retrieve(rid)
    assert (got.id, got.output_text) == (rid, "Hello from upstream")
    assert alice.responses.cancel(rid).status == "cancelled"
    items = alice.responses.input_items.list(rid)
    assert [item.role for item in items.data] == ["user"]  # type: ignore[union-attr]
    alice.responses.delete(rid)
    assert _seen(upstream) == [
        ("POST", "/v1/responses"),
        ("GET", f"/v1/responses/{rid}"),
        ("POST", f"/v1/responses/{rid}/cancel"),
        ("GET", f"/v1/responses/{rid}/input_items"),
        ("DELETE", f"/v1/responses/{rid}"),
    ]
    assert upstream.seen[2].body == b""  # a cancel's body is not the upstream's to read


def test_anyone_else_gets_404_and_the_upstream_sees_nothing(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    alice, bob, root = _clients(gateway)
    rid = alice.responses.create(model="test-model", input="secret plans").id
    upstream.seen.clear()
    for other in (bob, root):  # administrators too: a response is its creator's alone
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(rid)
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(rid, stream=True)
        with pytest.raises(openai.NotFoundError):
            other.responses.cancel(rid)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(rid)
        with pytest.raises(openai.NotFoundError):
            other.responses.input_items.list(rid)
    status, body = _raw(gateway, "GET", f"/v1/responses/{rid}", BOB)
    assert status == 404
    assert body == {
        "error": {
            "message": "No response with this id.",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }
    assert upstream.seen == []
    assert alice.responses.retrieve(rid).id == rid  # still there for its owner


@pytest.mark.parametrize(
    "path",
    [
        "/v1/responses/resp_0123456789abcdef",  # well formed, never created
        "/v1/responses/resp.1",
        "/v1/responses/" + "a" * 129,
        "/v1/responses/%2e%2e",
        "/v1/responses/a/b",
        "/v1/responses/{id}",
    ],
)
def test_unknown_or_malformed_ids_are_404(
    gateway: GatewayProcess, upstream: FakeUpstream, path: str
) -> None:
    assert _raw(gateway, "GET", path, KEYS.user)[0] == 404
    assert _raw(gateway, "POST", path + "/cancel", KEYS.user)[0] == 404
    assert upstream.seen == []


def test_a_streamed_create_is_owned_from_its_first_event(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    alice, bob, _ = _clients(gateway)
    release = threading.Event()
    upstream.behaviour.hold_after_first = release
    try:
        stream = alice.responses.create(model="test-model", input="hi", stream=True)
        first = next(iter(stream))
        assert first.type == "response.created"
        rid = first.response.id
        # the stream is still open: its owner is known already
        assert alice.responses.retrieve(rid).id == rid
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(rid)
    finally:
        release.set()
    kinds = [event.type for event in stream]
    assert kinds[-1] == "response.completed"


def test_a_streamed_create_is_billed_the_usage_of_its_last_event(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    upstream.behaviour.events = 11  # the fake reports one output token per delta
    alice, _, _ = _clients(gateway)
    with alice.responses.create(model="test-model", input="hi", stream=True) as stream:
        last = list(stream)[-1]
    assert last.type == "response.completed"  # the event that carries usage still arrives
    line = next(
        line for line in gateway.wait_for_log("tokens=5/11").splitlines() if "tokens=5/11" in line
    )
    assert '"POST /v1/responses" 200' in line


def test_previous_response_id_must_be_the_callers_own(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    alice, bob, root = _clients(gateway)
    first = alice.responses.create(model="test-model", input="my secret")
    upstream.seen.clear()
    for other in (bob, root):
        with pytest.raises(openai.NotFoundError) as refused:
            other.responses.create(model="test-model", input="and?", previous_response_id=first.id)
        assert refused.value.param == "previous_response_id"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        alice.responses.create(model="test-model", input="x", previous_response_id="resp.1")
    with pytest.raises(openai.BadRequestError):
        alice.responses.create(
            model="test-model", input="x", extra_body={"previous_response_id": 7}
        )
    assert upstream.seen == []
    second = alice.responses.create(model="test-model", input="and?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert orjson.loads(upstream.seen[-1].body)["previous_response_id"] == first.id


def test_a_create_cannot_choose_its_response_id(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    alice, _, root = _clients(gateway)
    taken = alice.responses.create(model="test-model", input="hi").id
    upstream.seen.clear()
    with pytest.raises(openai.BadRequestError) as refused:
        root.responses.create(
            model="test-model", input="mine now", extra_body={"request_id": taken}
        )
    assert refused.value.code == "field_not_allowed"
    assert upstream.seen == []
    # the same role may send request_id where it names no stored response
    root.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}],
        extra_body={"request_id": "mine"},
    )  # fmt: skip
    assert len(upstream.seen) == 1


def test_retrieval_goes_to_the_upstream_that_created_the_response(tmp_path: Path) -> None:
    a, b = FakeUpstream().start(), FakeUpstream().start()
    config = _config(a.url, b.url, upstream={"health": {"interval": 0.2, "timeout": 0.5}})
    try:
        with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
            alice = openai_client(gateway.url, KEYS.user)
            ids = [alice.responses.create(model="test-model", input="hi").id for _ in range(4)]
            assert set(a.responses) and set(b.responses)  # the balancer spread them
            a.seen.clear()
            b.seen.clear()
            for rid in ids:
                assert alice.responses.retrieve(rid).id == rid
                alice.responses.create(model="test-model", input="and?", previous_response_id=rid)
            for fake in (a, b):
                assert _seen(fake) == [
                    step for rid in ids if rid in fake.responses
                    for step in (("GET", f"/v1/responses/{rid}"), ("POST", "/v1/responses"))
                ]  # fmt: skip
            b.stop()  # the response it keeps is out of reach, not served by another
            on_b = next(rid for rid in ids if rid in b.responses)
            deadline = time.monotonic() + 10
            while True:
                with pytest.raises(openai.APIStatusError) as failed:
                    alice.responses.retrieve(on_b)
                if failed.value.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert failed.value.status_code == 503
            assert failed.value.code == "no_healthy_upstream"  # type: ignore[attr-defined]
            assert not [s for s in a.seen if s.path == f"/v1/responses/{on_b}"]
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def replicas(
    upstream: FakeUpstream, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    reset_postgres(postgres_url)
    config = _config(upstream.url, store={"url": postgres_url})
    with (
        running_gateway(config, tmp_path_factory.mktemp("a"), UPSTREAM_KEY) as first,
        running_gateway(
            {**config, "server": dict(config["server"])},
            tmp_path_factory.mktemp("b"),
            UPSTREAM_KEY,
        ) as second,
    ):
        yield first, second


def _stored_owner(postgres_url: str, rid: str, timeout: float = 5.0) -> tuple[str, float]:
    """The owner the store holds for ``rid``, and how long it took to appear there."""
    started = time.monotonic()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT principal FROM response_owners WHERE response_id = %s", (rid,)
            ).fetchone()
            if row is not None:
                return str(row[0]), time.monotonic() - started
            assert time.monotonic() - started < timeout, "the owner never reached the store"
            time.sleep(0.005)


def test_a_replica_that_did_not_see_the_create_enforces_ownership(
    replicas: tuple[GatewayProcess, GatewayProcess], upstream: FakeUpstream, postgres_url: str
) -> None:
    first, second = replicas
    created = openai_client(first.url, KEYS.user).responses.create(model="test-model", input="hi")
    owner, lag = _stored_owner(postgres_url, created.id)
    assert owner == "alice" and lag < 1.0
    upstream.seen.clear()
    for key in (BOB, KEYS.admin):  # the second replica reads the owner from the store
        with pytest.raises(openai.NotFoundError):
            openai_client(second.url, key).responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            openai_client(second.url, key).responses.create(
                model="test-model", input="x", previous_response_id=created.id
            )
    assert upstream.seen == []
    assert openai_client(second.url, KEYS.user).responses.retrieve(created.id).id == created.id


def test_owners_reach_the_store_while_creates_run_concurrently(
    replicas: tuple[GatewayProcess, GatewayProcess], postgres_url: str
) -> None:
    first, second = replicas

    def create(index: int) -> str:
        client = openai_client((first, second)[index % 2].url, KEYS.user)
        return client.responses.create(model="test-model", input="hi").id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(40)))
    assert all(_stored_owner(postgres_url, rid)[0] == "alice" for rid in ids)
    bob = openai_client(second.url, BOB)
    for rid in ids[:4]:
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(rid)
