"""deploy/compose/compose.yaml: valid Compose (the compose_spec library, strict: unknown keys
and wrong types are refused), and consistent with the images and the gateway's config.

Docker Compose itself cannot be had here (no Docker registry, no compose plugin), and
podman-compose 1.0 has no `config` command; so the file is interpolated as Compose does
(``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``) and then parsed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from bastion.settings import Secret
from bastion.sources import load_settings
from tests.support.dockerfile import parse

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
_VARIABLE = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, environment: dict[str, str]) -> str:
    """Compose's variable substitution (nested defaults aside)."""

    def substitute(match: re.Match[str]) -> str:
        escaped, name, dash, default, question, message, bare = match.groups()
        if escaped:
            return "$"
        name = name or bare
        value = environment.get(name)
        if dash is not None:
            unset = value is None or (dash == ":-" and value == "")
            return default if unset else value or ""
        if question is not None and (value is None or (question == ":?" and value == "")):
            raise ValueError(f"{name}: {message}")
        return value or ""

    return _VARIABLE.sub(substitute, text)


def load(environment: dict[str, str] | None = None) -> dict[str, Any]:
    text = interpolate((COMPOSE_DIR / "compose.yaml").read_text(), environment or {})
    compose = PyCompose.from_yaml(text)
    compose.validate()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


COMPOSE = load()
SERVICES: dict[str, Any] = COMPOSE["services"]


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$x $SET", env) == "v d d  $x v"
    with pytest.raises(ValueError, match="NEEDED: give it"):
        interpolate("${NEEDED:?give it}", env)


def test_the_validator_refuses_what_compose_would() -> None:
    text = interpolate((COMPOSE_DIR / "compose.yaml").read_text(), {})
    for wrong in (
        text.replace("condition: service_healthy", "condition: service_up", 1),
        text.replace("start_period: 60s", "start_perod: 60s", 1),
        text.replace("stop_grace_period: 45s", "stop_grace_period: 45 seconds", 1),
    ):
        with pytest.raises(ValueError, match=r"unknown variant|extension key|duration"):
            PyCompose.from_yaml(wrong)


def test_one_command_starts_the_gateway_after_its_dependencies_are_healthy() -> None:
    default = {n for n, s in SERVICES.items() if "profiles" not in s}
    assert default == {"bastion", "model", "postgres", "redis"}
    depends = SERVICES["bastion"]["depends_on"]
    assert depends == {n: {"condition": "service_healthy"} for n in ("postgres", "redis", "model")}
    for name in default - {"bastion"}:
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD", name
    # bastion's own health check is the image's HEALTHCHECK (tests/deploy/test_dockerfile.py)
    assert "healthcheck" not in SERVICES["bastion"]


def test_only_the_gateway_is_published() -> None:
    published = {n for n, s in SERVICES.items() if s.get("ports")}
    assert published == {"bastion"}
    assert SERVICES["bastion"]["ports"] == ["8080:8080"]
    assert load({"GATEWAY_PORT": "9000"})["services"]["bastion"]["ports"] == ["9000:8080"]


def test_the_images_are_built_from_the_dockerfile_targets() -> None:
    stages = {s.name for s in parse(ROOT / "Dockerfile").stages}
    for name, target in (("bastion", "gateway"), ("model", "embedded")):
        build = SERVICES[name]["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() == ROOT
        assert build["target"] in stages and build["target"] == target


def test_the_containers_are_locked_down() -> None:
    for name in ("bastion", "model"):
        service = SERVICES[name]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]


def test_named_volumes_are_declared() -> None:
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, (name, source)


@pytest.mark.parametrize(
    ("config", "profile_services"),
    [("./bastion.yaml", set()), ("./bastion.gpu.yaml", {"vllm"})],
)
def test_the_gateway_config_fits_the_services(config: str, profile_services: set[str]) -> None:
    compose = load({"GATEWAY_CONFIG": config})
    services = compose["services"]
    bastion = services["bastion"]
    (mount,) = [v for v in bastion["volumes"] if v.endswith(":/etc/bastion/bastion.yaml:ro")]
    settings = load_settings(COMPOSE_DIR / mount.split(":", 1)[0])
    assert settings.server.port == 8080 and settings.server.host == "0.0.0.0"
    grace = int(bastion["stop_grace_period"].removesuffix("s"))
    drain_delay = getattr(settings.server, "drain_delay", 0.0)
    assert grace >= drain_delay + settings.server.drain_timeout + 5
    # every {env: NAME} the config reads is set for the gateway
    secrets = [settings.store.url, settings.limits.redis.url] + [
        u.api_key for m in settings.models for u in m.upstreams
    ]
    needed = {s.env for s in secrets if isinstance(s, Secret) and s.env}
    assert needed <= set(bastion["environment"])
    assert settings.limits.backend == "redis"
    # every upstream is a service of the file, on the port its command gives it
    hosts = set()
    for model in settings.models:
        for upstream in model.upstreams:
            host, port = upstream.url.removeprefix("http://").split(":")
            assert f"--port={port}" in services[host]["command"], upstream.url
            hosts.add(host)
    assert hosts == {"model"} | profile_services
    for host in profile_services:
        assert services[host]["profiles"] == ["gpu"]


def test_the_model_server_serves_the_embedded_images_model() -> None:
    embedded = load_settings(ROOT / "deploy" / "container" / "embedded.yaml")
    command = SERVICES["model"]["command"]
    assert f"--model={embedded.engine.model}" in command
    assert f"--model_alias={embedded.engine.served_name}" in command
    assert "--chat_format=gemma" in command
    served = {m.name for m in load_settings(COMPOSE_DIR / "bastion.yaml").models}
    assert served == {embedded.engine.served_name}
    assert (
        SERVICES["model"]["environment"]["API_KEY"]
        == SERVICES["bastion"]["environment"]["MODEL_API_KEY"]
    )


def test_vllm_gets_a_gpu_only_in_its_profile() -> None:
    vllm = SERVICES["vllm"]
    assert vllm["profiles"] == ["gpu"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert "/health" in vllm["healthcheck"]["test"][-1]
    assert vllm["environment"]["VLLM_API_KEY"] == SERVICES["bastion"]["environment"]["VLLM_API_KEY"]
