"""``bastion probe`` against the embedded engine (llama.cpp's server, started for real).

Its routes check the key in their handlers (FastAPI dependencies), not before routing as
vLLM does: a GET to a POST route is 405 with or without a key, so the probe must say
"unknown" there rather than "open".
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

from bastion.upstream.engine import ManagedEngine
from tests.integration.test_engine_llama import engine, state_dir

__all__ = ["engine", "state_dir"]  # the engine fixture, shared with test_engine_llama

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def probe(engine: ManagedEngine, *args: str) -> tuple[int, dict[str, Any], str]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bastion", "probe", engine.base_url, "--json", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ENGINE_KEY": engine.api_key},
    )
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode is not None
    return child.returncode, json.loads(out), (out + err).decode()


async def test_the_embedded_engine_leaves_nothing_open(engine: ManagedEngine) -> None:
    code, report, printed = await probe(engine, "--key", "env:ENGINE_KEY")
    assert code == 0 and report["open"] == []
    assert report["keys_in_handlers"] is True and report["keys_before_routing"] is False
    routes = {r["route"]: r for r in report["routes"]}
    assert routes["GET /v1/models"]["verdict"] == "needs key"
    assert routes["GET /v1/models"]["with_key"] == {"answer": 200, "verdict": "open"}
    for name in ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings"):
        assert (routes[name]["answer"], routes[name]["verdict"]) == (405, "unknown"), name
    assert routes["POST /tokenize"]["verdict"] == "absent"  # llama.cpp: /extras/tokenize
    assert routes["GET /openapi.json"]["verdict"] == "open"  # information, reported
    assert engine.api_key not in printed
