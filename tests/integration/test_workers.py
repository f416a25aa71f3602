"""Several cores: one supervisor and two worker processes on one port, as people run them.

Real processes, real signals, the official client. Which worker served a request is read
from the kernel (``tests/support/workers.py``): a test that claims something of every
worker first holds connections to each of them.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.conftest import UPSTREAM_KEY, closed_port
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.support.workers import chat, connections_held, one_on_each_worker, worker_pids

KEYS = Keys()
LIMITED = generate_key()
HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return closed_port()


@pytest.fixture(scope="module")
def cluster(
    upstream: FakeUpstream, metrics_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Two workers; limits in Redis under a prefix of this run's own."""
    config = base_config(upstream.url, KEYS)
    config["server"]["workers"] = 2
    config["auth"]["api_keys"].append(
        {"name": "limited", "hash": hash_key(LIMITED), "role": "user"}
    )
    config["limits"] = {
        "backend": "redis",
        "redis": {"url": "redis://127.0.0.1:6379/0", "key_prefix": f"bt-{secrets.token_hex(4)}:"},
        "keys": {"limited": {"requests_per_minute": 50}},
    }
    config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    config["store"] = {"poll_interval": 0.2}
    config["http"] = {"keep_alive_timeout": 60}  # tests hold connections to each worker
    with running_gateway(config, tmp_path_factory.mktemp("workers"), UPSTREAM_KEY) as gateway:
        assert sorted(worker_pids(gateway.logs)) == [1, 2]
        yield gateway


# -- helpers ---------------------------------------------------------------------------------


def pids(gateway: GatewayProcess) -> list[int]:
    return list(worker_pids(gateway.logs).values())


def scrape_text(url: str, key: str | None = None) -> str:
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    assert response.status == 200, body
    return body


def scrape(url: str, key: str | None = None) -> Samples:
    body = scrape_text(url, key)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def chats_answered(samples: Samples, code: str = "2xx") -> float:
    wanted = (("code", code), ("model", "test-model"), ("route", CHAT))
    return samples.get(("bastion_requests_total", wanted), 0.0)


def rewrite(gateway: GatewayProcess, config: dict[str, Any]) -> None:
    path = gateway.workdir / "bastion.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    tmp.replace(path)


def wait_for_count(gateway: GatewayProcess, text: str, count: int, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while gateway.logs.count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not {count} times:\n{gateway.logs}"
        time.sleep(0.02)
    return gateway.logs


async def many_chats(url: str, key: str, count: int) -> list[int]:
    """``count`` chat requests at once through the official async client."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)

    async def one() -> int:
        try:
            await client.chat.completions.create(model="test-model", messages=HI)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            return exc.status_code
        return 200

    try:
        return await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await client.close()


# -- one gateway, two workers ----------------------------------------------------------------


def test_a_limit_in_redis_admits_exactly_its_50_of_200_concurrent_requests(
    cluster: GatewayProcess,
) -> None:
    port = cluster.host_port[1]
    workers = pids(cluster)
    seen: dict[int, int] = {pid: 0 for pid in workers}
    done = threading.Event()

    def watch() -> None:  # which workers hold the client's connections meanwhile
        while not done.is_set():
            for pid, held in connections_held(port, workers).items():
                seen[pid] = max(seen[pid], held)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answers = asyncio.run(many_chats(cluster.url, LIMITED, 200))
    finally:
        done.set()
        watcher.join()
    assert answers.count(200) == 50, sorted(set(answers))
    assert answers.count(429) == 150
    assert all(held > 0 for held in seen.values()), f"not every worker served: {seen}"


def test_one_scrape_counts_every_request_completed_on_any_worker(
    cluster: GatewayProcess, metrics_port: int
) -> None:
    listener = f"http://127.0.0.1:{metrics_port}/metrics"
    before = chats_answered(scrape(listener))
    conns = one_on_each_worker(cluster, each=3)
    count = 0
    for round_ in range(5):
        for conn in conns:
            assert chat(conn, KEYS.user) == 200
            count += 1
        # at once after the last answer, through the supervisor's listener and a worker
        assert chats_answered(scrape(listener)) == before + count, round_
        on_port = scrape(cluster.url + "/bastion/metrics", KEYS.admin)
        assert chats_answered(on_port) == before + count
    for conn in conns:
        conn.close()
    text = scrape_text(listener)
    samples = scrape(listener)
    assert samples[("bastion_workers", ())] == 2
    assert samples[("bastion_upstream_healthy", (("upstream", cluster_upstream(cluster)),))] == 1
    # one family and one series each, not one per worker
    assert text.count("# TYPE bastion_requests_total counter\n") == 1
    assert text.count("\nbastion_config_reloads_total ") == 1


def cluster_upstream(gateway: GatewayProcess) -> str:
    config = yaml.safe_load((gateway.workdir / "bastion.yaml").read_text())
    return str(config["models"][0]["upstreams"][0]["url"]).split("://", 1)[1]


def test_sighup_has_every_worker_serve_the_new_configuration(
    cluster: GatewayProcess, metrics_port: int
) -> None:
    listener = f"http://127.0.0.1:{metrics_port}/metrics"
    applied = scrape(listener)[("bastion_config_reloads_total", ())]
    config = yaml.safe_load((cluster.workdir / "bastion.yaml").read_text())
    original = yaml.safe_load(yaml.safe_dump(config))
    config["models"][0]["name"] = "renamed-model"
    rewrite(cluster, config)
    reloaded = cluster.logs.count("configuration reloaded")
    cluster.proc.send_signal(signal.SIGHUP)
    logs = wait_for_count(cluster, "configuration reloaded", reloaded + 1)
    assert "serving renamed-model" in logs
    conns = one_on_each_worker(cluster, each=2)
    for conn in conns:  # every worker serves the new name, and only it
        assert chat(conn, KEYS.user, "renamed-model") == 200
        assert chat(conn, KEYS.user, "test-model") == 404
    # back through the admin API of one worker: every worker reloads
    rewrite(cluster, original)
    status = admin_reload(cluster)
    assert status == 200
    for conn in conns:
        assert chat(conn, KEYS.user, "test-model") == 200
        assert chat(conn, KEYS.user, "renamed-model") == 404
        conn.close()
    assert cluster.logs.count("configuration reloaded") == reloaded + 2  # once each, not per worker
    assert scrape(listener)[("bastion_config_reloads_total", ())] == applied + 2


def admin_reload(gateway: GatewayProcess) -> int:
    host, port = gateway.host_port
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/admin/v1/reload", headers={"Authorization": f"Bearer {KEYS.admin}"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def test_the_supervisor_refuses_an_invalid_file_before_any_worker_sees_it(
    cluster: GatewayProcess, metrics_port: int
) -> None:
    listener = f"http://127.0.0.1:{metrics_port}/metrics"
    failures = scrape(listener)[("bastion_config_reload_failures_total", ())]
    good = yaml.safe_load((cluster.workdir / "bastion.yaml").read_text())
    try:
        # in memory, two workers would admit twice the limit: refused, with the way out
        rewrite(cluster, {**good, "limits": {"per_user": {"requests_per_minute": 5}}})
        refused = cluster.logs.count("configuration reload refused")
        cluster.proc.send_signal(signal.SIGHUP)
        logs = wait_for_count(cluster, "configuration reload refused", refused + 1)
        assert "limits.backend: memory and server.workers: 2" in logs
        assert admin_reload(cluster) == 422
        logs = wait_for_count(cluster, "configuration reload refused", refused + 2)
        assert "[worker" not in "".join(
            line for line in logs.splitlines(True) if "reload refused" in line
        )  # said by the supervisor, once, not by each worker
    finally:
        rewrite(cluster, good)
    assert scrape(listener)[("bastion_config_reload_failures_total", ())] == failures + 2
    for conn in one_on_each_worker(cluster):
        assert chat(conn, KEYS.user) == 200  # the running configuration stayed
        conn.close()


def test_a_killed_worker_is_restarted_and_serving_goes_on(
    cluster: GatewayProcess, metrics_port: int
) -> None:
    listener = f"http://127.0.0.1:{metrics_port}/metrics"
    for conn in one_on_each_worker(cluster):  # both have counted something
        assert chat(conn, KEYS.user) == 200
        conn.close()
    before = scrape(listener)
    starts = cluster.logs.count("[worker 1] serving")
    victim = worker_pids(cluster.logs)[1]
    os.kill(victim, signal.SIGKILL)
    while _alive(victim):
        time.sleep(0.01)
    host, port = cluster.host_port
    for _ in range(30):  # new connections while it is away: the other worker takes them
        conn = http.client.HTTPConnection(host, port, timeout=10)
        assert chat(conn, KEYS.user) == 200
        conn.close()
    logs = wait_for_count(cluster, "[worker 1] serving", starts + 1)
    assert f"worker 1 (pid {victim}) was killed by SIGKILL; restarting it" in logs
    assert worker_pids(logs)[1] != victim
    after = scrape(listener)
    assert (
        after[("bastion_worker_restarts_total", ())]
        == before.get(("bastion_worker_restarts_total", ()), 0) + 1
    )
    assert after[("bastion_workers", ())] == 2
    # the dead worker's share stays counted: the total only grew
    assert chats_answered(after) >= chats_answered(before) + 30
    for conn in one_on_each_worker(cluster):
        assert chat(conn, KEYS.user) == 200
        conn.close()


# -- a gateway of each test's own --------------------------------------------------------------


def test_sigterm_drains_every_worker_keeps_every_usage_record_and_exits_0(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = base_config(upstream.url, KEYS)
    del config["auth"]  # no key configured: the first administrator key is made, once
    config["server"].update(workers=2, drain_timeout=10)
    release = threading.Event()
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        logs = gateway.wait_for_log("Administrator API key")
        key = logs.split("Administrator API key", 1)[1].split("bst_", 1)[1].split()[0]
        admin = "bst_" + key
        conns = one_on_each_worker(gateway, each=2)
        for conn in conns:
            for _ in range(10):
                assert chat(conn, admin) == 200  # the one key works on every worker
            assert chat(conn, "bst_not-a-key") == 401  # audited by the worker that refused
        # both workers writing usage records to the one SQLite file at the same time
        assert asyncio.run(many_chats(gateway.url, admin, 300)) == [200] * 300
        upstream.behaviour.hold_after_first = release
        stream = openai_client(gateway.url, admin).chat.completions.create(
            model="test-model", messages=HI, stream=True
        )
        first = next(iter(stream))
        gateway.proc.send_signal(signal.SIGTERM)
        wait_for_count(gateway, "Shutting down", 2)
        host, port = gateway.host_port
        deadline = time.monotonic() + 5
        while True:  # once every worker closed its copy of the socket: refused
            try:
                socket.create_connection((host, port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting"
            time.sleep(0.05)
        release.set()
        rest = [c.choices[0].delta.content for c in stream if c.choices]
        assert [first.choices[0].delta.content, *rest] == ["tok0 ", "tok1 ", "tok2 "]
        assert gateway.proc.wait(20) == 0, gateway.logs
        for conn in conns:
            conn.close()
        logs = gateway.logs
    assert logs.count("Administrator API key") == 1
    assert logs.count("clean-up done by Bastion") == 2
    with sqlite3.connect(tmp_path / "bastion.db") as db:
        (recorded,) = db.execute("SELECT count(*) FROM usage_records").fetchone()
        (refused,) = db.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'request.refused'"
        ).fetchone()
    assert recorded == len(conns) * 11 + 300 + 1  # one per request, refusals too: none lost
    assert refused == len(conns)


def test_memory_limits_with_two_workers_are_refused_at_start(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = base_config(upstream.url, KEYS, limits={"per_key": {"concurrency": 4}})
    path = tmp_path / "bastion.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "serve", "--config", str(path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TEST_UPSTREAM_KEY": UPSTREAM_KEY},
    )
    assert done.returncode == 2
    assert "limits.backend: memory and server.workers: 2" in done.stderr
    assert "Use limits.backend: redis" in done.stderr


def test_workers_that_keep_failing_to_start_make_the_supervisor_give_up(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    users = tmp_path / "users.htpasswd"
    users.write_text("ann:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    config = base_config(upstream.url, KEYS)
    config["server"]["workers"] = 2
    config["auth"]["htpasswd"] = {"file": str(users)}
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        users.unlink()  # a worker started from now on cannot start
        os.kill(worker_pids(gateway.logs)[2], signal.SIGKILL)
        assert gateway.proc.wait(60) not in (0, None)
        logs = gateway.logs
    assert "worker 2 exited with status 2 before it served 4 times in a row; stopping" in logs
    assert logs.count("cannot read") >= 4  # each failed start said why


def test_an_invalid_tls_file_is_refused_before_any_worker_starts(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = base_config(upstream.url, KEYS)
    config["server"].update(
        workers=2, tls={"certificate": str(tmp_path / "no.pem"), "key": str(tmp_path / "no.key")}
    )
    path = tmp_path / "bastion.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TEST_UPSTREAM_KEY": UPSTREAM_KEY},
    )
    assert done.returncode == 2, done.stderr
    assert "server.tls" in done.stderr
    assert "[worker" not in done.stderr


def test_workers_stop_when_their_supervisor_is_killed(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = base_config(upstream.url, KEYS)
    config["server"]["workers"] = 2
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        workers = pids(gateway)
        gateway.proc.kill()
        gateway.proc.wait(5)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "orphaned workers kept running"
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"
