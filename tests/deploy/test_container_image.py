"""The real Dockerfile, built with podman and run (deploy/container/build-offline.sh).

No container registry can be reached here, so the script first makes a stand-in for the
python:3.11-slim-bookworm base from Debian's packages; the rest is the real build, offline.
Needs root and podman, runc and debootstrap (scripts/setup --test installs them); about two
minutes the first time on this machine, under one once the stand-in and layers are cached.
The embedded target (which compiles llama.cpp) is left to a manual run of the script.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.container
def test_the_gateway_image_builds_runs_and_stops_cleanly() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "container" / "build-offline.sh"), "gateway"],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for step in (
        "GET /health: 200",
        "GET /v1/models without a key: 401",
        "HEALTHCHECK: healthy",
        "runs as uid 10001; no compiler in the image",
        "SIGTERM: exit status 0",
    ):
        assert f"== {step}" in output, output[-4000:]
    (build,) = [line for line in output.splitlines() if line.startswith("== build: ")]
    assert "compiled (mypyc, " in build, build  # the request path runs compiled in the image
