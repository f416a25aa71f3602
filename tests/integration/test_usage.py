"""Usage records: every inference request is recorded, totals equal what the upstream reported,
and a slow store neither slows requests nor loses records."""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bastion.auth.apikeys import generate_key, hash_key
from bastion.cli import main
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

ADA, BOB, ROOT = generate_key(), generate_key(), generate_key()
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("usage")


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, state: Path) -> Iterator[GatewayProcess]:
    config = base_config(upstream.url, Keys())
    config["auth"] = {
        "api_keys": [
            {"name": "ada", "hash": hash_key(ADA), "role": "user"},
            {"name": "bob", "hash": hash_key(BOB), "role": "user"},
            {"name": "root", "hash": hash_key(ROOT), "role": "admin"},
        ]
    }
    config["store"] = {"poll_interval": 0.2}
    config["usage"] = {"prices": {"test-model": {"input": 1.0, "output": 2.0}}, "currency": "EUR"}
    with running_gateway(config, state, UPSTREAM_KEY) as process:
        yield process


def usage(
    gateway: GatewayProcess, capsys: pytest.CaptureFixture[str], *args: str
) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["usage", "--url", gateway.url, "--json", "--period", "all", *args]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def wait_for_requests(
    gateway: GatewayProcess, capsys: pytest.CaptureFixture[str], user: str, count: int
) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while True:
        rows = usage(gateway, capsys, "--user", user)
        if rows and rows[0]["requests"] == count:
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def test_usage_totals_equal_what_the_upstream_reported(
    gateway: GatewayProcess,
    upstream: FakeUpstream,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BASTION_API_KEY", ROOT)
    client = openai_client(gateway.url, ADA)
    upstream.behaviour.events = 4
    for _ in range(3):  # the fake reports 5 prompt + 3 completion tokens
        client.chat.completions.create(model="test-model", messages=CHAT)
    for _ in range(2):  # streams: 5 prompt + 4 completion, in the usage chunk Bastion asks for
        list(client.chat.completions.create(model="test-model", messages=CHAT, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    rows = wait_for_requests(gateway, capsys, "ada", 6)
    assert rows[0]["prompt_tokens"] == 3 * 5 + 2 * 5
    assert rows[0]["completion_tokens"] == 3 * 3 + 2 * 4
    assert rows[0]["errors"] == 1
    assert rows[0]["cost"] == pytest.approx((25 * 1.0 + 17 * 2.0) / 1e6)  # per million tokens
    assert (rows[0]["currency"], rows[0]["unpriced_tokens"]) == ("EUR", 0)
    by_model = {r["model"]: r for r in usage(gateway, capsys, "--user", "ada", "--by", "model")}
    assert by_model["test-model"]["requests"] == 5
    # a table and CSV for people and spreadsheets
    assert main(["usage", "--url", gateway.url, "--user", "ada", "--csv", "--period", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("user,requests,errors,prompt_tokens")
    assert lines[1].startswith("ada,6,1,25,17")
    assert main(["usage", "--url", gateway.url, "--user", "ada", "--period", "all"]) == 0
    head, ada = capsys.readouterr().out.splitlines()
    assert head.split()[-4:] == ["COST", "CURRENCY", "UNPRICED", "TOKENS"]
    assert ada.split()[-3:] == ["0.000059", "EUR", "0"]


def test_a_slow_store_neither_slows_requests_nor_loses_records(
    gateway: GatewayProcess,
    state: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BASTION_API_KEY", ROOT)
    client = openai_client(gateway.url, BOB)

    def timed(count: int) -> list[float]:
        took = []
        for _ in range(count):
            started = time.perf_counter()
            client.chat.completions.create(model="test-model", messages=CHAT)
            took.append(time.perf_counter() - started)
        return took

    before = timed(20)
    # the fault: hold the database's write lock, as a stuck writer would
    blocker = sqlite3.connect(state / "bastion.db", timeout=5)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        during = timed(40)
        time.sleep(1.5)  # the gateway's writes are now waiting on the lock
        during += timed(20)
        stalled = usage(gateway, capsys, "--user", "bob")  # reads still work (WAL)
        assert not stalled or stalled[0]["requests"] < 80  # the records are held, not written
    finally:
        blocker.rollback()
        blocker.close()
    assert statistics.median(during) < statistics.median(before) * 3 + 0.005
    assert max(during) < 0.5
    rows = wait_for_requests(gateway, capsys, "bob", 80)
    assert rows[0]["prompt_tokens"] == 80 * 5
