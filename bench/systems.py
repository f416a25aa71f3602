"""The systems compared: the upstream called directly, nginx (the floor), Bastion and LiteLLM.

Each system knows how to prepare itself once (write a config, make a key), how to start on the
gateway core, how to tell it is ready, and what to send as credentials. A system that cannot run
here says why in ``unavailable``; the report shows that instead of a number.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.presets import PresetFacts, PresetNotReadyError, build_preset
from bench.procs import CpuLayout, Proc, port_is_free

__all__ = [
    "BASTION_PORT",
    "BENCH_DIR",
    "FLOOR_PORT",
    "FLOOR_RAW_PORT",
    "LITELLM_PORT",
    "NGINX_PORT",
    "OTLP_SINK_PORT",
    "UPSTREAM_PORT",
    "BastionOptions",
    "BastionSystem",
    "DirectSystem",
    "FloorSystem",
    "LiteLLMSystem",
    "NginxSystem",
    "System",
    "check_preset",
    "generate_bastion_key",
    "make_systems",
]

BENCH_DIR = Path(__file__).resolve().parent
UPSTREAM_PORT = 18001
BASTION_PORT = 18080
NGINX_PORT = 18081
LITELLM_PORT = 18082
FLOOR_PORT = 18083
FLOOR_RAW_PORT = 18084
OTLP_SINK_PORT = 18090
_UPSTREAM_URL = f"http://127.0.0.1:{UPSTREAM_PORT}"


@dataclass
class System:
    """Base: a name, a port to load, credentials, and how to start (nothing, for direct)."""

    name: str
    port: int
    auth: str | None = None
    """The whole ``Authorization`` header value callers send, e.g. ``Bearer bst_...``."""
    health_path: str = "/health"
    ready_timeout_s: float = 30.0
    unavailable: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_gateway(self) -> bool:
        return True

    def prepare(self, workdir: Path) -> None:
        """Once per run, before any scenario; sets ``unavailable`` instead of raising."""

    def launch(self, workdir: Path, layout: CpuLayout, nofile: int) -> Proc | None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Once per run, after every scenario: stop what ``prepare`` started."""


@dataclass
class DirectSystem(System):
    """The client talks to the fake upstream itself: the baseline every gateway adds to."""

    @property
    def is_gateway(self) -> bool:
        return False

    def launch(self, workdir: Path, layout: CpuLayout, nofile: int) -> Proc | None:
        return None


_NGINX_CONF = """# Written by bench/systems.py: a plain reverse proxy, the floor for any gateway.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections {connections};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream model {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


@dataclass
class NginxSystem(System):
    def prepare(self, workdir: Path) -> None:
        if shutil.which("nginx") is None:
            self.unavailable = "nginx is not installed (apt-get install -y nginx)"

    def launch(self, workdir: Path, layout: CpuLayout, nofile: int) -> Proc | None:
        conf_dir = workdir / "nginx"
        conf_dir.mkdir(exist_ok=True)
        conf = conf_dir / "nginx.conf"
        conf.write_text(
            _NGINX_CONF.format(
                dir=conf_dir,
                nofile=nofile,
                connections=nofile,
                upstream=UPSTREAM_PORT,
                port=self.port,
            )
        )
        argv = ["nginx", "-p", str(conf_dir), "-c", str(conf), "-e", "stderr"]
        return Proc("nginx", layout.gateway_prefix() + argv, workdir, nofile=nofile)


@dataclass
class FloorSystem(System):
    """A Python floor (``bench/floor.py``): Bastion's upstream client relaying, with none of a
    gateway's own work, on uvicorn (``floor``) or on a bare protocol (``floor-raw``); what
    Bastion costs beyond it is Bastion's."""

    server: str = "uvicorn"

    def launch(self, workdir: Path, layout: CpuLayout, nofile: int) -> Proc | None:
        argv = [sys.executable, "-m", "bench.floor", "--port", str(self.port)]
        argv += ["--upstream", _UPSTREAM_URL, "--server", self.server]
        prefix = layout.gateway_prefix()
        return Proc(self.name, prefix + argv, workdir, nofile=nofile, cwd=BENCH_DIR.parent)


@dataclass(frozen=True)
class BastionOptions:
    preset: str = "apikey"
    config: Path | None = None
    key: str | None = None
    workers: int = 1
    """``bastion serve --workers``: processes serving the port."""


def _bastion_argv() -> list[str]:
    script = Path(sys.executable).parent / "bastion"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bastion"]


def generate_bastion_key() -> tuple[str, str]:
    """A fresh key and its hash from ``bastion keys generate --json`` (keys carry a checksum)."""
    done = subprocess.run(
        [*_bastion_argv(), "keys", "generate", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-600:]
        raise RuntimeError(f"`bastion keys generate --json` failed ({done.returncode}): {tail}")
    try:
        found = json.loads(done.stdout)
        return str(found["key"]), str(found["hash"])
    except (ValueError, KeyError, TypeError) as exc:
        output = done.stdout.strip()[-300:]
        raise RuntimeError(f"`bastion keys generate --json` printed {output!r}") from exc


@dataclass
class BastionSystem(System):
    options: BastionOptions = field(default_factory=BastionOptions)
    config_path: Path | None = None
    sink: Proc | None = None
    """The OTLP traces sink, for the tracing presets (on the load core, like the upstream)."""
    _wants_sink: bool = False
    limits_backend: str | None = None
    """Where the config keeps its limits (``memory``, ``redis``; None: no limits): the
    report judges the ratio to nginx against a looser target with limits in Redis."""

    def prepare(self, workdir: Path) -> None:
        try:
            self.config_path = self._config(workdir)
            if self._wants_sink:
                self.sink = _start_sink(workdir)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, yaml.YAMLError) as exc:
            self.unavailable = f"not runnable: {exc}"

    def cleanup(self) -> None:
        sink = self.sink
        if sink is None:
            return
        self.sink = None
        sink.stop()
        counts = [line for line in sink.log_tail().splitlines() if line.startswith("otlp-sink:")]
        self.notes.append(counts[-1] if counts else "otlp-sink: no counts printed")

    def _config(self, workdir: Path) -> Path:
        given = self.options.config
        if given is not None:
            key = self.options.key or os.environ.get("BENCH_BASTION_KEY")
            if not key:
                raise RuntimeError("--bastion-config needs --bastion-key or BENCH_BASTION_KEY")
            self.auth = f"Bearer {key}"
            loaded: Any = yaml.safe_load(given.read_text())
            server = loaded.get("server", {}) if isinstance(loaded, dict) else {}
            self.port = int(server.get("port", 8080))
            self.limits_backend = _limits_backend(loaded)
            self.notes.append(f"config: {given}")
            return given
        key, key_hash = generate_bastion_key()
        facts = PresetFacts(self.port, _UPSTREAM_URL, workdir, key=key, key_hash=key_hash)
        preset = build_preset(self.options.preset, facts)
        self.auth = preset.authorization
        self._wants_sink = preset.otlp_sink
        self.limits_backend = _limits_backend(preset.config)
        path = workdir / f"bastion-{self.options.preset}.yaml"
        path.write_text(yaml.safe_dump(preset.config, sort_keys=False))
        self.notes.append(f"preset: {self.options.preset}")
        return path

    def launch(self, workdir: Path, layout: CpuLayout, nofile: int) -> Proc | None:
        assert self.config_path is not None  # prepare() succeeded, or we are not called
        argv = [*_bastion_argv(), "serve", "--config", str(self.config_path)]
        if self.options.workers > 1:
            argv += ["--workers", str(self.options.workers)]
        return Proc("bastion", layout.gateway_prefix() + argv, workdir, nofile=nofile)


def _limits_backend(config: Any) -> str | None:
    limits = config.get("limits") if isinstance(config, dict) else None
    if not isinstance(limits, dict):
        return None
    return str(limits.get("backend", "memory"))


def _start_sink(workdir: Path) -> Proc:
    if not port_is_free(OTLP_SINK_PORT):
        raise RuntimeError(f"port {OTLP_SINK_PORT} (the OTLP sink's) is in use")
    layout = CpuLayout.detect()
    argv = [sys.executable, "-m", "bench.otlp_sink", "--port", str(OTLP_SINK_PORT)]
    sink = Proc("otlp-sink", layout.prefix(layout.load) + argv, workdir, cwd=BENCH_DIR.parent)
    deadline = time.monotonic() + 20
    while port_is_free(OTLP_SINK_PORT):
        if not sink.alive() or time.monotonic() > deadline:
            sink.stop()
            raise RuntimeError(f"the OTLP sink did not start: {sink.log_tail()}")
        time.sleep(0.05)
    return sink


def check_preset(name: str) -> str | None:
    """An error message when preset ``name`` cannot be built, else None (checked up front)."""
    try:
        with tempfile.TemporaryDirectory() as scratch:  # a preset may write files
            build_preset(name, PresetFacts(0, _UPSTREAM_URL, Path(scratch), key="", key_hash=""))
    except PresetNotReadyError as exc:
        return str(exc)
    return None


@dataclass
class LiteLLMSystem(System):
    venv: Path = BENCH_DIR / ".venv-litellm"

    def prepare(self, workdir: Path) -> None:
        exe = self.venv / "bin" / "litellm"
        if not exe.exists():
            self.unavailable = (
                f"not available: {exe} not found (python -m venv bench/.venv-litellm && "
                "bench/.venv-litellm/bin/pip install 'litellm[proxy]')"
            )
            return
        master_key = "sk-bench-" + secrets.token_hex(8)
        self.auth = f"Bearer {master_key}"
        config = {
            "model_list": [
                {
                    "model_name": "bench-model",
                    "litellm_params": {
                        "model": "openai/bench-model",
                        "api_base": f"{_UPSTREAM_URL}/v1",
                        "api_key": "unused",
                    },
                }
            ],
            "general_settings": {"master_key": master_key},
            "litellm_settings": {"drop_params": True},
        }
        (workdir / "litellm.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def launch(self, workdir: Path, layout: CpuLayout, nofile: int) -> Proc | None:
        exe = self.venv / "bin" / "litellm"
        argv = [str(exe), "--config", str(workdir / "litellm.yaml")]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"]
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env.update({"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"})
        env.update({"DISABLE_SCHEMA_UPDATE": "True", "LITELLM_MODE": "PRODUCTION"})
        prefix = layout.gateway_prefix()
        return Proc("litellm", prefix + argv, workdir, env=env, nofile=nofile, cwd=workdir)


def make_systems(names: list[str], bastion: BastionOptions) -> list[System]:
    """The systems to compare, in report order."""
    table: dict[str, System] = {
        "direct": DirectSystem("direct", UPSTREAM_PORT),
        "nginx": NginxSystem("nginx", NGINX_PORT),
        "floor": FloorSystem("floor", FLOOR_PORT),
        "floor-raw": FloorSystem("floor-raw", FLOOR_RAW_PORT, server="raw"),
        "bastion": BastionSystem("bastion", BASTION_PORT, options=bastion),
        "litellm": LiteLLMSystem(
            "litellm", LITELLM_PORT, health_path="/health/liveliness", ready_timeout_s=180.0
        ),
    }
    return [
        table[name]
        for name in ("direct", "nginx", "floor", "floor-raw", "bastion", "litellm")
        if name in names
    ]
