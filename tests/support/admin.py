"""A gateway whose admin API tests drive, with its store on SQLite or on PostgreSQL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import reset_postgres
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

STORES = ["sqlite", "postgresql"]
"""The params of a fixture that runs its module's tests once on each kind of store."""


@contextmanager
def store_gateway(
    request: pytest.FixtureRequest, upstream_url: str, keys: Keys, workdir: Path
) -> Iterator[GatewayProcess]:
    """A gateway with its store on ``request.param``: SQLite in its state directory, or the
    session's PostgreSQL database, emptied first."""
    config = base_config(upstream_url, keys)
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        reset_postgres(url)
        config["store"] = {"url": url}
    with running_gateway(config, workdir, "upstream-key") as process:
        yield process


def admin_call(
    gateway: GatewayProcess, key: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One admin request (``path`` below ``/admin/v1/``, with its query); the status and the
    parsed JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(gateway.url + "/admin/v1/" + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
