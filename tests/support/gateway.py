"""Run a real ``bastion serve`` process for tests and wait until it listens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from bastion.auth.apikeys import generate_key, hash_key

_LISTENING = re.compile(r"Bastion listening on (https?://\S+)")


@dataclass
class Keys:
    user: str = field(default_factory=generate_key)
    admin: str = field(default_factory=generate_key)

    def config(self) -> list[dict[str, str]]:
        return [
            {"name": "alice", "hash": hash_key(self.user), "role": "user"},
            {"name": "root", "hash": hash_key(self.admin), "role": "admin"},
        ]


ADMIN_KEY = re.compile(r"\b(bst_[A-Za-z0-9]{38})\b")
"""A Bastion API key as the gateway prints it."""


class GatewayProcess:
    """A ``python -m bastion serve`` child; ``logs`` collects everything it printed.

    With ``stderr_apart``, ``stderr`` also holds what it wrote to standard error alone (the
    log), in the order written.
    """

    def __init__(
        self,
        config: dict[str, Any] | None,
        workdir: Path,
        env: dict[str, str] | None = None,
        ready_timeout: float = 30.0,
        *,
        stderr_apart: bool = False,
    ) -> None:
        self.workdir = workdir
        self.output: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        args = [sys.executable, "-m", "bastion", "serve", "--port", "0"]
        if config is not None:
            path = workdir / "bastion.yaml"
            path.write_text(yaml.safe_dump(config))
            args += ["--config", str(path)]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr_apart else subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)]
        if stderr_apart:
            reader = threading.Thread(target=self._read, args=(self.proc.stderr, True), daemon=True)
            self._readers.append(reader)
        for reader in self._readers:
            reader.start()
        self.url = self._wait_listening(ready_timeout)

    def _read(self, stream: IO[str] | None, errors: bool = False) -> None:
        assert stream is not None
        for line in stream:
            with self._lock:
                self.output.append(line)
                if errors:
                    self.errors.append(line)

    @property
    def logs(self) -> str:
        with self._lock:
            return "".join(self.output)

    @property
    def stderr(self) -> str:
        """Standard error alone (with ``stderr_apart``)."""
        with self._lock:
            return "".join(self.errors)

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.logs)
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"gateway did not start; output:\n{self.logs}")

    def printed_admin_key(self, timeout: float = 10.0) -> str:
        """The administrator key the gateway printed at its first start."""
        deadline = time.monotonic() + timeout
        while not (found := ADMIN_KEY.search(self.logs)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no administrator key was printed:\n{self.logs}")
            time.sleep(0.05)
        return found.group(1)

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        """The output once ``text`` appears in it (access-log lines are written in batches)."""
        deadline = time.monotonic() + timeout
        while text not in self.logs:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in the output:\n{self.logs}")
            time.sleep(0.02)
        return self.logs

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.split("://", 1)[1].rsplit(":", 1)
        return host, int(port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def running_gateway(
    config: dict[str, Any], state: Path, upstream_key: str = "k"
) -> Iterator[GatewayProcess]:
    """A gateway serving ``config`` with its state in ``state``; stopped on exit."""
    config["server"]["state_dir"] = str(state)
    process = GatewayProcess(config, state, env={"TEST_UPSTREAM_KEY": upstream_key})
    try:
        yield process
    finally:
        process.stop()


def base_config(upstream_url: str, keys: Keys, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1"},
        "models": [
            {
                "name": "test-model",
                "upstreams": [{"url": upstream_url, "api_key": {"env": "TEST_UPSTREAM_KEY"}}],
            }
        ],
        "auth": {"api_keys": keys.config()},
    }
    config.update(overrides)
    return config
