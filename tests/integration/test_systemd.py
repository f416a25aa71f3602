"""Running under systemd: sd_notify from a real ``bastion serve``, and the unit file in
deploy/systemd checked by systemd's own tools (``systemd-analyze``, ``systemd-sysusers``;
Debian's ``systemd`` package, installed by ``scripts/setup --test``)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.settings import ServerSettings
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT = DEPLOY / "bastion.service"


# -- sd_notify ----------------------------------------------------------------------------------


class Notifications:
    """An abstract datagram socket standing in for systemd's notification socket."""

    def __init__(self) -> None:
        self.name = f"bastion-test-notify-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.received: list[dict[str, str]] = []

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": "@" + self.name}

    def next(self, timeout: float = 10.0) -> dict[str, str]:
        """The next message, as its fields."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.split("\n"))
        self.received.append(fields)
        return fields


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    listener = Notifications()
    with listener.sock:
        yield listener


def test_sd_notify_at_start_reload_and_stop(
    upstream: FakeUpstream, tmp_path: Path, notifications: Notifications
) -> None:
    config = base_config(upstream.url, Keys())
    config["server"]["state_dir"] = str(tmp_path)
    env = {"TEST_UPSTREAM_KEY": UPSTREAM_KEY, **notifications.env}
    gateway = GatewayProcess(config, tmp_path, env=env)
    try:
        ready = notifications.next()
        assert ready == {"READY": "1", "STATUS": f"serving test-model on {gateway.url}"}
        socket.create_connection(gateway.host_port, timeout=5).close()  # it listens

        gateway.proc.send_signal(signal.SIGHUP)
        reloading = notifications.next()
        assert reloading["RELOADING"] == "1"
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < now - int(reloading["MONOTONIC_USEC"]) < 10_000_000  # the same clock
        assert notifications.next() == {
            "READY": "1",
            "STATUS": "configuration reloaded: serving test-model",
        }

        (tmp_path / "bastion.yaml").write_text("server: {drain_timeout: nope}\n")
        gateway.proc.send_signal(signal.SIGHUP)
        assert notifications.next()["RELOADING"] == "1"
        refused = notifications.next()
        assert refused["READY"] == "1"  # the running configuration serves on
        assert refused["STATUS"].startswith("reload refused")

        gateway.proc.send_signal(signal.SIGTERM)
        stopping = notifications.next()
        assert stopping["STOPPING"] == "1"
        assert stopping["STATUS"].startswith("draining")
        assert gateway.proc.wait(15) == 0
    finally:
        gateway.stop()

    assert [next(iter(m)) for m in notifications.received] == [
        "READY",
        "RELOADING",
        "READY",
        "RELOADING",
        "READY",
        "STOPPING",
    ]


def test_with_workers_only_the_supervisor_speaks_to_systemd(
    upstream: FakeUpstream, tmp_path: Path, notifications: Notifications
) -> None:
    config = base_config(upstream.url, Keys())
    config["server"].update(state_dir=str(tmp_path), workers=2)
    env = {"TEST_UPSTREAM_KEY": UPSTREAM_KEY, **notifications.env}
    gateway = GatewayProcess(config, tmp_path, env=env)
    try:
        ready = notifications.next(timeout=30)
        assert ready == {"READY": "1", "STATUS": f"serving on {gateway.url}"}
        gateway.proc.send_signal(signal.SIGHUP)
        assert notifications.next()["RELOADING"] == "1"
        assert notifications.next()["READY"] == "1"
        gateway.proc.send_signal(signal.SIGTERM)
        stopping = notifications.next()
        assert stopping["STOPPING"] == "1"
        assert gateway.proc.wait(30) == 0
        notifications.sock.settimeout(0.5)  # no worker spoke: nothing else arrived
        with pytest.raises(TimeoutError):
            notifications.sock.recv(4096)
    finally:
        gateway.stop()


def test_without_notify_socket_nothing_is_sent_and_an_early_sigterm_drains(
    upstream: FakeUpstream,
    tmp_path: Path,
    notifications: Notifications,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    config = base_config(upstream.url, Keys())
    config["server"]["state_dir"] = str(tmp_path)
    gateway = GatewayProcess(config, tmp_path, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        # at once after the listening line: its signal handlers are already in place
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(15) == 0
    finally:
        gateway.stop()
    notifications.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        notifications.sock.recv(4096)


# -- the unit file ------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """The unit's sections and their keys' values (a key may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        assert current is not None, f"a setting outside any section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.setdefault(key, []).append(value)
    return sections


def installed_copy(tmp_path: Path) -> Path:
    """The unit as installed here: ExecStart pointing at this environment's ``bastion``
    (``systemd-analyze verify`` checks that the command exists)."""
    bastion = Path(sys.executable).parent / "bastion"
    assert bastion.exists()
    text = UNIT.read_text().replace("/opt/bastion/venv/bin/bastion", str(bastion))
    copy = tmp_path / "bastion.service"
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # an unknown or misspelt key is only a warning: there must be none
    assert "bastion.service" not in result.stdout + result.stderr, result.stderr


def test_the_units_sandbox_is_rated_ok_by_systemd(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20",
         str(installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    exposure = re.search(r"Overall exposure level for bastion\.service: ([\d.]+)", result.stdout)
    assert exposure is not None, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {exposure.group(1)} is above 2.0"


def test_the_unit_is_a_notify_service_that_reloads_drains_and_is_sandboxed() -> None:
    unit = unit_settings(UNIT.read_text())
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"].split()[1:] == ["serve", "--config", "/etc/bastion/bastion.yaml"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"  # SIGTERM to Bastion only: it stops its engine
    defaults = ServerSettings()
    assert float(service["TimeoutStopSec"]) >= defaults.drain_delay + defaults.drain_timeout + 10
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["StateDirectory"] == "bastion"
    assert service["User"] == "bastion"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    # AF_UNIX is what sd_notify uses
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_sysusers_file_makes_the_bastion_account(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(DEPLOY / "bastion.sysusers")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    passwd = (root / "etc" / "passwd").read_text()
    account = next(line for line in passwd.splitlines() if line.startswith("bastion:"))
    _, _, uid, _, _, home, shell = account.split(":")
    assert 0 < int(uid) < 1000  # a system account
    assert home == "/var/lib/bastion"
    assert shell.endswith("nologin")
    assert "bastion:" in (root / "etc" / "group").read_text()
