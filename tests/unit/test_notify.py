"""sd_notify messages, received on a real datagram socket of the test's own."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.server import notify


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket at a short path (AF_UNIX paths are limited to 107 bytes), set as
    NOTIFY_SOCKET."""
    with tempfile.TemporaryDirectory(prefix="sd") as folder:
        path = os.path.join(folder, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        with sock:
            yield sock


def fields(message: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.decode().split("\n"))


def test_ready_with_status(listener: socket.socket) -> None:
    assert notify.send("READY=1", "STATUS=x")
    notify.ready("serving m on http://127.0.0.1:8080")
    assert listener.recv(4096) == b"READY=1\nSTATUS=x"
    assert fields(listener.recv(4096)) == {
        "READY": "1",
        "STATUS": "serving m on http://127.0.0.1:8080",
    }


def test_reloading_carries_the_monotonic_clock(listener: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = fields(listener.recv(4096))
    assert got["RELOADING"] == "1"
    assert before <= int(got["MONOTONIC_USEC"]) <= after
    assert got["STATUS"] == "reloading the configuration"


def test_stopping_and_status(listener: socket.socket) -> None:
    notify.stopping()
    assert fields(listener.recv(4096)) == {"STOPPING": "1", "STATUS": "stopping"}
    notify.status("two\nlines")  # a newline would smuggle in another key
    assert listener.recv(4096) == b"STATUS=two lines"


def test_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"bastion-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notify.ready()
        assert sock.recv(4096) == b"READY=1"


def test_nothing_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify.send("READY=1")
    notify.ready("x")
    notify.reloading()
    notify.stopping()
    notify.status("x")  # none of them raises
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")  # nothing systemd would give
    assert not notify.send("READY=1")


def test_a_socket_that_is_gone_is_logged_once_never_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(notify, "_warned", False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="bastion"):
        assert not notify.send("READY=1")
        notify.stopping()
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1
