"""The shipped alert rules pass promtool's checks and unit tests; the Grafana dashboard is a
well-formed dashboard whose every panel reads the data source variable.

That every metric these files read is one the gateway exports is checked against a running
gateway in tests/integration/test_monitoring.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.support.monitoring import (
    RULE_TESTS,
    RULES,
    dashboard,
    dashboard_expressions,
    metric_names,
    panels,
    promtool,
    rule_expressions,
    rules,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


# -- alert rules ------------------------------------------------------------------------------


def test_the_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_expressions(rules()))} rules found" in done.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_unit_tests_cover_firing_and_quiet_cases_of_several_alerts() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert len(firing) >= 2
    assert {"BastionHighErrorRate", "BastionNoHealthyUpstream", "BastionDown"} <= firing & quiet
    assert firing <= set(rule_expressions(rules()))


def test_every_alert_says_how_bad_and_what_happened() -> None:
    for group in rules()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]


def test_a_broken_rule_fails_the_check(tmp_path: Any) -> None:
    """The check above can fail: promtool refuses a rule with a PromQL error."""
    broken = rules()
    broken["groups"][0]["rules"][0]["expr"] = "sum by (job (up"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    done = promtool("check", "rules", str(path))
    assert done.returncode != 0


# -- the dashboard ----------------------------------------------------------------------------


def test_the_dashboard_has_its_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 41
    assert board["uid"] and board["title"] == "Bastion"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "model", "team"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "model", "team"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["includeAll"] and variable["allValue"] == ".*"


def test_every_panel_reads_the_data_source_variable_and_has_queries() -> None:
    board = dashboard()
    shown = panels(board)
    assert len(shown) >= 20
    for panel in shown:
        where = f"panel {panel['id']} ({panel['title']})"
        assert panel["datasource"] == DATASOURCE, where
        assert panel["targets"], where
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
            assert target["expr"].strip(), where
            assert metric_names(target["expr"]), where
        assert panel["title"] and panel["description"], where


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    board = dashboard()
    every = [*board["panels"], *(p for row in board["panels"] for p in row.get("panels", []))]
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], int] = {}
    for panel in every:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["id"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"panels {taken.get((x, y))} and {panel['id']}"
                taken[(x, y)] = panel["id"]


def test_the_panels_cover_what_an_operator_watches() -> None:
    read = {
        name for expr in dashboard_expressions(dashboard()).values() for name in metric_names(expr)
    }
    for needed in (
        "bastion_requests_total",
        "gen_ai_server_request_duration_seconds_count",
        "gen_ai_server_request_duration_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "bastion_tokens_total",
        "bastion_limiter_decisions_total",
        "bastion_model_upstreams_available",
        "bastion_upstream_healthy",
        "bastion_upstream_ejections_total",
        "bastion_store_failures_total",
        "bastion_limiter_backend_failures_total",
        "bastion_draining",
        "up",
    ):
        assert needed in read, needed


# -- reading PromQL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="bastion"} == 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (le, gen_ai_request_model) "
            '(rate(gen_ai_server_time_to_first_token_seconds_bucket{job=~"$job"}[$__rate_interval])))'
            " > 5",
            {"gen_ai_server_time_to_first_token_seconds_bucket"},
        ),
        (
            'sum(rate(a_total{code="5xx", x="sum(b)"}[5m]))'
            " / sum without (code) (rate(b_total[5m])) and on (job) c > 1e3",
            {"a_total", "b_total", "c"},
        ),
        (
            "bastion_tls_certificate_expiry_timestamp_seconds - time() < 14 * 86400",
            {"bastion_tls_certificate_expiry_timestamp_seconds"},
        ),
        (
            "increase(x_total[15m]) > 0 or increase(y_total[15m] offset 1h) > 0",
            {"x_total", "y_total"},
        ),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
