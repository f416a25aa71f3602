"""``logging.format: json``: everything a running gateway writes to standard error is JSON,
one object per line: start-up, uvicorn's lines, warnings and errors with the request's id,
a refused reload, the stop, and a start-up that fails."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PROMPT = "the-prompt-text-that-must-never-be-logged"


def _log_lines(stderr: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(log records, access-log records): every line must parse as one JSON object."""
    records, access = [], []
    for line in stderr.split("\n")[:-1]:
        parsed = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(parsed, dict), line
        if "route" in parsed:  # the access log keeps its own fields
            access.append(parsed)
            continue
        assert TIME.match(parsed["time"]), line
        assert parsed["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert parsed["logger"] and isinstance(parsed["message"], str), line
        records.append(parsed)
    assert stderr.endswith("\n")
    return records, access


def _wait(gateway: GatewayProcess, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while gateway.stderr.count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{gateway.stderr}"
        time.sleep(0.02)


def test_every_line_on_standard_error_is_a_json_object(
    upstream: FakeUpstream, keys: Keys, tmp_path: Path
) -> None:
    config = base_config(upstream.url, keys, logging={"format": "json"})
    config["server"]["state_dir"] = str(tmp_path)
    gateway = GatewayProcess(
        config, tmp_path, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}, stderr_apart=True
    )
    try:
        client = openai_client(gateway.url, keys.user)
        hi = [{"role": "user", "content": PROMPT}]
        assert client.chat.completions.create(model="test-model", messages=hi).choices
        with pytest.raises(openai.AuthenticationError):
            openai_client(gateway.url, "bst_" + "x" * 40).models.list()
        upstream.behaviour.cut_after = 1  # one event, then the upstream's socket closes
        stream = client.chat.completions.create(
            model="test-model",
            messages=hi,
            stream=True,
            extra_headers={"X-Request-Id": "their-cut-1"},
        )
        with pytest.raises(openai.APIError):
            list(stream)
        _wait(gateway, "upstream failed mid-response")
        config["bogus_setting"] = 1  # the reload is refused; the running configuration stays
        (tmp_path / "bastion.yaml").write_text(yaml.safe_dump(config))
        gateway.proc.send_signal(signal.SIGHUP)
        _wait(gateway, "configuration reload refused")
    finally:
        gateway.stop()
    assert gateway.proc.returncode == 0

    records, access = _log_lines(gateway.stderr)
    by_message = {r["message"].split(" request_id=")[0].split(":")[0]: r for r in records}
    listening = next(r for r in records if r["message"].startswith("Bastion listening on"))
    assert (listening["level"], listening["logger"]) == ("info", "bastion")
    assert {"uvicorn.error"} <= {r["logger"] for r in records}  # uvicorn's own lines
    failed = by_message["authentication failed"]
    assert failed["level"] == "info" and failed["request_id"]
    cut = by_message["upstream failed mid-response"]
    assert cut["level"] == "warning" and cut["caller_request_id"] == "their-cut-1"
    assert cut["request_id"] in {a["request_id"] for a in access}  # the same request's id
    assert "exception" not in cut  # an expected fault: no traceback
    refused = by_message["configuration reload refused, the running one stays"]
    assert refused["level"] == "error" and "bogus_setting" in refused["message"]
    assert any(r["message"].startswith("stopping (SIGTERM)") for r in records)
    assert len(access) == 3
    for secret in (PROMPT, keys.user, keys.admin, UPSTREAM_KEY):
        assert secret not in gateway.stderr


@pytest.mark.parametrize("form", ["json", "text"])
def test_a_gateway_that_cannot_start_says_why_in_its_log_form(
    form: str, upstream: FakeUpstream, keys: Keys, tmp_path: Path
) -> None:
    config = base_config(upstream.url, keys, logging={"format": form})
    config["server"]["state_dir"] = str(tmp_path)
    path = tmp_path / "bastion.yaml"
    path.write_text(yaml.safe_dump(config))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "bastion", "serve", "--config", str(path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TEST_UPSTREAM_KEY": UPSTREAM_KEY},
        )
    assert done.returncode == 2
    if form == "text":  # as it always was
        assert done.stderr.endswith(f"bastion: error: server: cannot listen on 127.0.0.1:{port}: "
                                    "Address already in use\n")  # fmt: skip
        for line in done.stderr.split("\n")[:-2]:
            assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ", line), line
        return
    records, _ = _log_lines(done.stderr)
    assert (records[-1]["level"], records[-1]["logger"]) == ("error", "bastion")
    assert f"cannot listen on 127.0.0.1:{port}" in records[-1]["message"]
