"""The Helm chart (deploy/helm/bastion), rendered by the real helm 4 and helm 3.

Every manifest of every values set is validated against Kubernetes' own schemas, strictly
(unknown fields refused), for each minor version from 1.29 to the newest that
kubernetes-validate bundles; the ServiceMonitor against a schema written from the Prometheus
Operator's CRD (tests/support/servicemonitor.schema.json). The rendered bastion.yaml is checked
by ``bastion config check``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.helm import (
    CHART,
    HELMS,
    ROOT,
    RenderError,
    by_kind,
    documented_values,
    helm_binary,
    leaf_values,
    lint,
    readme_table,
    render,
    run_helm,
    values_table,
)

DATABASE_URL = "postgresql://bastion:pg-Secret-9@postgres.ai.svc:5432/bastion"
REDIS_URL = "redis://:redis-Secret-7@redis.ai.svc:6379/0"
VLLM_KEY = "vllm-Secret-5"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything": {
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "database": {"url": DATABASE_URL},
        "redis": {"url": REDIS_URL},
        "secretEnv": {"VLLM_API_KEY": VLLM_KEY},
        "workers": 4,
        "drain": {"delay": 7.5, "timeout": 60, "margin": 10},
        "config": {
            "models": [
                {
                    "name": "llama",
                    "upstreams": [{"url": "http://vllm:8000", "api_key": {"env": "VLLM_API_KEY"}}],
                }
            ],
            "limits": {"per_key": {"requests_per_minute": 60}},
        },
    },
    "existing-secrets": {
        "database": {"existingSecret": "pg-app", "existingSecretKey": "uri"},
        "redis": {"existingSecret": "redis-auth"},
        "envFrom": [{"secretRef": {"name": "vllm-keys"}}],
        "service": {"type": "LoadBalancer", "port": 443},
    },
    "single": {"replicaCount": 1, "metrics": {"enabled": False}},
}

KUBERNETES_VERSIONS = [
    v
    for v in dict.fromkeys(kubernetes_validate.utils.all_versions())
    if tuple(map(int, v.split(".")[:2])) >= (1, 29)
]
SERVICE_MONITOR_SCHEMA = json.loads(
    (ROOT / "tests" / "support" / "servicemonitor.schema.json").read_text()
)


@pytest.fixture(scope="module", params=sorted(HELMS))
def helm(request: pytest.FixtureRequest) -> str:
    path = helm_binary(request.param)
    version = run_helm(path, "version", "--template", "{{.Version}}").stdout
    assert version.startswith(HELMS[request.param]), version
    return path


_rendered: dict[tuple[str, str], list[dict[str, Any]]] = {}


def rendered(helm: str, name: str) -> dict[str, dict[str, Any]]:
    if (helm, name) not in _rendered:
        _rendered[helm, name] = render(helm, VALUE_SETS[name])
    return by_kind(_rendered[helm, name])


def deployment_pod(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = manifests["Deployment"]["spec"]["template"]
    return pod


def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = deployment_pod(manifests)["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def bastion_yaml(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(manifests["ConfigMap"]["data"]["bastion.yaml"])
    return config


def env(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container(manifests)["env"]}


# ---- the chart as a whole ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_passes(helm: str, name: str) -> None:
    done = lint(helm, VALUE_SETS[name])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_manifest_is_valid_kubernetes(helm: str, name: str) -> None:
    manifests = rendered(helm, name)
    checked = []
    for manifest in manifests.values():
        if manifest["kind"] == "ServiceMonitor":
            jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(manifest)
        else:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(manifest, version, strict=True)
        checked.append(manifest["kind"])
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= set(checked)


def test_the_schemas_cover_the_versions_the_chart_supports() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert KUBERNETES_VERSIONS[0] == "1.29.0"
    assert {"1.30.0", "1.31.0", "1.32.0", "1.33.0"} <= set(KUBERNETES_VERSIONS)


def test_the_kubernetes_schemas_refuse_a_misspelt_field(helm: str) -> None:
    """The validation above can fail: strict schemas refuse what Kubernetes would not know."""
    deployment = rendered(helm, "defaults")["Deployment"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(jsonschema.ValidationError, match="readOnlyRootFS"):
        kubernetes_validate.validate(broken, "1.29", strict=True)


def test_the_service_monitor_schema_refuses_a_bad_interval(helm: str) -> None:
    monitor = json.loads(json.dumps(rendered(helm, "everything")["ServiceMonitor"]))
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError, match="30 seconds"):
        jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(monitor)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_rendered_config_passes_bastion_config_check(
    helm: str, name: str, tmp_path: Path
) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text(rendered(helm, name)["ConfigMap"]["data"]["bastion.yaml"])
    secrets = {"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "config", "check", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **secrets, "VLLM_API_KEY": VLLM_KEY},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"# {config}: valid" in done.stdout


# ---- probes, shutdown, security ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_probes_ask_health_and_ready_on_the_port_bastion_listens_on(helm: str, name: str) -> None:
    manifests = rendered(helm, name)
    main = container(manifests)
    http = {"port": "http", "scheme": "HTTP"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/health", **http}
    assert main["startupProbe"]["httpGet"] == {"path": "/health", **http}
    assert main["readinessProbe"]["httpGet"] == {"path": "/ready", **http}
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    server = bastion_yaml(manifests)["server"]
    assert ports["http"] == server["port"] == 8080
    assert server["host"] == "0.0.0.0"
    assert main["args"] == ["--config", "/etc/bastion/bastion.yaml"]


def test_with_tls_the_probes_speak_https_and_the_certificate_is_mounted(helm: str) -> None:
    tls = {"certificate": "/etc/bastion-tls/tls.crt", "key": "/etc/bastion-tls/tls.key"}
    values = {
        "config": {"server": {"tls": tls}},
        "extraVolumes": [{"name": "tls", "secret": {"secretName": "gw-tls"}}],
        "extraVolumeMounts": [{"name": "tls", "mountPath": "/etc/bastion-tls", "readOnly": True}],
    }
    manifests = by_kind(render(helm, values))
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(manifests["Deployment"], version, strict=True)
    main = container(manifests)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"]["scheme"] == "HTTPS"
    assert main["volumeMounts"][-1] == values["extraVolumeMounts"][0]
    assert deployment_pod(manifests)["spec"]["volumes"][-1] == values["extraVolumes"][0]
    assert bastion_yaml(manifests)["server"]["tls"] == tls


@pytest.mark.parametrize(
    ("name", "delay", "timeout", "grace"),
    [("defaults", 5, 30, 45), ("everything", 7.5, 60, 78)],
)
def test_the_grace_period_covers_the_drain(
    helm: str, name: str, delay: float, timeout: float, grace: int
) -> None:
    manifests = rendered(helm, name)
    server = bastion_yaml(manifests)["server"]
    assert (server["drain_delay"], server["drain_timeout"]) == (delay, timeout)
    pod = deployment_pod(manifests)["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace == math.ceil(delay + timeout) + 10
    assert "lifecycle" not in container(manifests)  # the drain delay replaces a preStop sleep


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pods_run_locked_down(helm: str, name: str) -> None:
    manifests = rendered(helm, name)
    pod = deployment_pod(manifests)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    main = container(manifests)
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/etc/bastion"]["readOnly"] is True
    assert "configMap" in volumes[mounts["/etc/bastion"]["name"]]
    state_dir = bastion_yaml(manifests)["server"]["state_dir"]
    for writable in (state_dir, "/tmp"):
        assert "emptyDir" in volumes[mounts[writable]["name"]]
    assert main["resources"]["limits"]["memory"] and main["resources"]["requests"]["cpu"]


# ---- configuration and secrets ------------------------------------------------------------------


def test_a_config_change_rolls_the_pods_and_nothing_else_does(helm: str) -> None:
    def checksum(values: dict[str, Any]) -> str:
        pod = deployment_pod(by_kind(render(helm, values)))
        annotation: str = pod["metadata"]["annotations"]["checksum/config"]
        return annotation

    base = checksum({})
    config_text = rendered(helm, "defaults")["ConfigMap"]["data"]["bastion.yaml"]
    assert base == hashlib.sha256(config_text.rstrip("\n").encode()).hexdigest()
    assert checksum({"replicaCount": 5, "podLabels": {"team": "ml"}}) == base
    assert checksum({"config": {"logging": {"format": "text"}}}) != base
    assert checksum({"drain": {"delay": 9, "timeout": 30, "margin": 10}}) != base


def test_secrets_reach_the_pods_only_through_the_secret(helm: str) -> None:
    manifests = rendered(helm, "everything")
    secret = manifests["Secret"]["data"]
    decoded = {k: base64.b64decode(v).decode() for k, v in secret.items()}
    assert decoded == {
        "database-url": DATABASE_URL,
        "redis-url": REDIS_URL,
        "VLLM_API_KEY": VLLM_KEY,
    }
    name = manifests["Secret"]["metadata"]["name"]
    assert env(manifests) == {
        "DATABASE_URL": {"secretKeyRef": {"name": name, "key": "database-url"}},
        "REDIS_URL": {"secretKeyRef": {"name": name, "key": "redis-url"}},
        "VLLM_API_KEY": {"secretKeyRef": {"name": name, "key": "VLLM_API_KEY"}},
    }
    config = bastion_yaml(manifests)
    assert config["store"]["url"] == {"env": "DATABASE_URL"}
    assert config["limits"]["backend"] == "redis"
    assert config["limits"]["redis"]["url"] == {"env": "REDIS_URL"}
    assert config["limits"]["per_key"] == {"requests_per_minute": 60}  # the user's part kept
    assert config["server"]["workers"] == 4
    in_the_clear = yaml.safe_dump([m for k, m in manifests.items() if k != "Secret"])
    for secret_value in ("pg-Secret-9", "redis-Secret-7", VLLM_KEY):
        assert secret_value not in in_the_clear
        assert hashlib.sha256(secret_value.encode()).hexdigest() not in in_the_clear


def test_existing_secrets_are_referred_to_and_none_is_made(helm: str) -> None:
    manifests = rendered(helm, "existing-secrets")
    assert "Secret" not in manifests
    assert env(manifests) == {
        "DATABASE_URL": {"secretKeyRef": {"name": "pg-app", "key": "uri"}},
        "REDIS_URL": {"secretKeyRef": {"name": "redis-auth", "key": "redis-url"}},
    }
    assert container(manifests)["envFrom"] == [{"secretRef": {"name": "vllm-keys"}}]
    assert manifests["Service"]["spec"]["type"] == "LoadBalancer"
    assert manifests["Service"]["spec"]["ports"][0]["port"] == 443


def test_without_a_database_the_store_is_off(helm: str) -> None:
    manifests = rendered(helm, "defaults")
    assert bastion_yaml(manifests)["store"] == {"enabled": False}
    assert "Secret" not in manifests
    assert "env" not in container(manifests)
    with pytest.raises(RenderError, match="no database is given"):
        render(helm, {"config": {"store": {"enabled": True}}})


# helm 4 says where as /config/server, helm 3 as config.server: "." matches either.
@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"config": {"server": {"port": 9000}}}, "config.server"),
        ({"config": {"store": {"url": DATABASE_URL}}}, "config.store"),
        ({"config": {"limits": {"redis": {"url": REDIS_URL}}}}, "config.limits.redis"),
        ({"database": {"url": DATABASE_URL, "existingSecret": "x"}}, "database"),
        ({"drain": {"delay": -1, "timeout": 30, "margin": 10}}, "drain.delay"),
        ({"replicas": 3}, "replicas"),
        ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "metrics.enabled"),
    ],
)
def test_wrong_values_are_refused(helm: str, values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(RenderError, match=complaint):
        render(helm, values)


# ---- scaling, disruption, monitoring ------------------------------------------------------------


def test_the_autoscaler_owns_the_replica_count(helm: str) -> None:
    manifests = rendered(helm, "everything")
    assert "replicas" not in manifests["Deployment"]["spec"]
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": manifests["Deployment"]["metadata"]["name"],
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert rendered(helm, "defaults")["Deployment"]["spec"]["replicas"] == 2
    assert "HorizontalPodAutoscaler" not in rendered(helm, "defaults")


def test_the_disruption_budget_selects_the_pods_and_never_blocks_a_lone_one(helm: str) -> None:
    manifests = rendered(helm, "defaults")
    budget = manifests["PodDisruptionBudget"]["spec"]
    assert budget["minAvailable"] == 1
    pod_labels = deployment_pod(manifests)["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert rendered(helm, "everything")["PodDisruptionBudget"]["spec"]["minAvailable"] == 2
    assert "PodDisruptionBudget" not in rendered(helm, "single")


def test_the_service_monitor_scrapes_the_metrics_listener(helm: str) -> None:
    manifests = rendered(helm, "everything")
    monitor = manifests["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    service_ports = {p["name"]: p for p in manifests["Service"]["spec"]["ports"]}
    assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    metrics_port = service_ports[endpoint["port"]]["port"]
    assert bastion_yaml(manifests)["metrics"]["listen"] == f"0.0.0.0:{metrics_port}"
    service_labels = manifests["Service"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ai"]}
    single = rendered(helm, "single")
    assert "metrics" not in bastion_yaml(single)
    assert [p["name"] for p in single["Service"]["spec"]["ports"]] == ["http"]


def test_the_service_selects_the_pods(helm: str) -> None:
    manifests = rendered(helm, "defaults")
    selector = manifests["Service"]["spec"]["selector"]
    assert selector.items() <= deployment_pod(manifests)["metadata"]["labels"].items()
    assert manifests["Service"]["spec"]["ports"][0]["targetPort"] == "http"


# ---- the chart's documentation ------------------------------------------------------------------


def test_the_readme_values_table_is_the_generated_one() -> None:
    readme = (CHART / "README.md").read_text()
    expected = values_table((CHART / "values.yaml").read_text())
    assert readme_table(readme) == expected, "regenerate it: python -m tests.support.helm"


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = {key for key, _ in documented_values(text)}
    leaves = leaf_values(yaml.safe_load(text))
    undocumented = [
        key for key in leaves if not any(key == d or key.startswith(d + ".") for d in documented)
    ]
    assert undocumented == []


def test_notes_say_where_to_connect() -> None:
    # Helm 4 only: Helm 3's install asks a cluster for its version even in a client dry run.
    helm = helm_binary("helm")
    done = run_helm(helm, "install", "gw", str(CHART), "--dry-run=client", "--namespace", "ai")
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "http://gw-bastion.ai.svc:8080/v1" in notes
    assert "Kubernetes waits 45 s" in notes
