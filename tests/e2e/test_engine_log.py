"""The managed engine's own output, relayed through the gateway's log, is JSON like the rest
under ``logging.format: json`` (llama.cpp prints many lines of its own while it loads)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.e2e

_KEY = re.compile(r"\bbst_[A-Za-z0-9]{38}\b")


def test_the_engines_relayed_output_is_json_lines(tmp_path: Path) -> None:
    config = {"server": {"state_dir": str(tmp_path)}, "logging": {"format": "json"}}
    config["logging"]["level"] = "debug"  # the engine's output is relayed at debug
    gateway = GatewayProcess(config, tmp_path, ready_timeout=600, stderr_apart=True)
    # uvicorn's signal handlers are in place (the engine's own uvicorn says the same words)
    gateway.wait_for_log('"logger":"uvicorn.error","message":"Started server process')
    gateway.stop()
    assert gateway.proc.returncode == 0
    lines = [json.loads(line) for line in gateway.stderr.split("\n") if line]
    relayed = [r for r in lines if r["logger"] == "bastion.engine" and r["level"] == "debug"]
    assert len(relayed) > 10, gateway.stderr  # llama.cpp's start-up output
    assert all(r["message"].startswith("engine: ") for r in relayed)
    assert any(r["message"].startswith("engine ") and "ready" in r["message"] for r in lines)
    assert _KEY.search(gateway.logs)  # the first start shows the administrator key...
    assert not _KEY.search(gateway.stderr)  # ...on standard output, never in the log
