"""The benchmark's production presets and the report's ratio rows (bench/presets.py,
bench/report.py): what issue 15's targets are judged on."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from bastion.sources import load_settings
from bench.presets import PresetFacts, build_preset
from bench.report import table_rows

KEY = "bst_bench"
FACTS_HASH = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()


def _settings(name: str, tmp_path: Path) -> Any:
    facts = PresetFacts(18080, "http://127.0.0.1:18001", tmp_path, KEY, FACTS_HASH)
    preset = build_preset(name, facts)
    path = tmp_path / "bastion.yaml"
    path.write_text(yaml.safe_dump(preset.config))
    return load_settings(path)


@pytest.mark.parametrize(
    ("name", "backend"), [("production", "memory"), ("production-redis", "redis")]
)
def test_the_production_presets_turn_on_everything_a_production_gateway_runs(
    name: str, backend: str, tmp_path: Path
) -> None:
    settings = _settings(name, tmp_path)
    (key,) = settings.auth.api_keys
    assert key.role == "inference" and key.models == ("bench-model",)  # model rules
    assert settings.roles["inference"].models == ("bench-*",)
    per_key = settings.limits.per_key
    assert per_key is not None and settings.limits.backend == backend
    assert None not in (per_key.requests_per_minute, per_key.tokens_per_minute,
                        per_key.concurrency, per_key.tokens_per_day)  # fmt: skip
    assert settings.store.enabled and settings.usage.enabled and settings.metrics.enabled
    assert settings.logging.access_log and settings.logging.format == "json"


def test_production_runs_the_console_and_production_no_console_differs_only_there(
    tmp_path: Path,
) -> None:
    on = _settings("production", tmp_path)
    off = _settings("production-no-console", tmp_path)
    assert on.console.enabled and not off.console.enabled
    assert on.model_dump(exclude={"console"}) == off.model_dump(exclude={"console"})


def _results(nginx: tuple[float, float] | None, bastion: tuple[float, float], **extra: Any) -> Any:
    def figures(request: float, event: float) -> dict[str, Any]:
        return {"scenarios": {"nonstream": {"cpu_us_per_request": request},
                              "stream": {"cpu_us_per_event": event}}}  # fmt: skip

    systems = {"bastion": {**figures(*bastion), **extra}}
    if nginx is not None:
        systems = {"nginx": figures(*nginx), **systems}
    return {"meta": {"mode": "full"}, "systems": systems}


def _rows(results: Any) -> dict[str, list[str]]:
    _, rows = table_rows(results)
    return {row[0]: row[1:] for row in rows}


def test_the_ratio_rows_divide_bastions_cpu_by_nginxs_from_the_same_run() -> None:
    rows = _rows(_results((20.0, 20.0), (59.0, 27.0), limits_backend="memory"))
    request = rows["Non-streaming: CPU per request over nginx's (same run)"]
    assert request == ["≤ 3x", "—", "3.0x", "pass"]
    event = rows["Streaming: CPU per event over nginx's (same run)"]
    assert event == ["≤ 1.3x", "—", "1.35x", "FAIL"]
    assert not any("limits in Redis" in label for label in rows)
    assert rows["Non-streaming: gateway CPU per request (µs)"][-1] == "pass"  # absolute rows stay


def test_with_limits_in_redis_the_request_ratio_is_judged_against_3_5() -> None:
    rows = _rows(_results((20.0, 20.0), (66.0, 25.0), limits_backend="redis"))
    label = "Non-streaming: CPU per request over nginx's (same run), limits in Redis"
    assert rows[label] == ["≤ 3.5x", "—", "3.3x", "pass"]
    assert "Non-streaming: CPU per request over nginx's (same run)" not in rows


def test_without_nginx_in_the_run_there_are_no_ratio_rows() -> None:
    rows = _rows(_results(None, (59.0, 27.0)))
    assert not any("over nginx's" in label for label in rows)
    assert rows["Streaming: gateway CPU per event (µs)"] == ["≤ 25", "27.0", "FAIL"]


def test_the_floor_shows_its_own_ratio_in_the_row_bastion_is_judged_in() -> None:
    results = _results((20.0, 20.0), (66.0, 25.0), limits_backend="redis")
    floor = {"scenarios": {"nonstream": {"cpu_us_per_request": 40.0},
                           "stream": {"cpu_us_per_event": 24.0}}}  # fmt: skip
    results["systems"] = {"nginx": results["systems"]["nginx"], "floor": floor,
                          "bastion": results["systems"]["bastion"]}  # fmt: skip
    rows = _rows(results)
    label = "Non-streaming: CPU per request over nginx's (same run), limits in Redis"
    assert rows[label] == ["≤ 3.5x", "—", "2.0x", "3.3x", "pass"]  # judged on Bastion's alone
    assert "Non-streaming: CPU per request over nginx's (same run)" not in rows
    assert rows["Streaming: CPU per event over nginx's (same run)"] == [
        "≤ 1.3x", "—", "1.20x", "1.25x", "pass"]  # fmt: skip
