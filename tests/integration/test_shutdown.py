"""Stopping the gateway with SIGTERM runs its clean-up: nothing buffered is lost."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Keys, base_config, running_gateway


def test_sigterm_flushes_the_access_log_and_closes_the_store(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    keys = Keys()
    config = base_config(upstream.url, keys)
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        request = urllib.request.Request(
            gateway.url + "/v1/models",
            headers={"Authorization": f"Bearer {keys.user}", "X-Request-Id": "last-one"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        gateway.stop()  # at once: the access line is still buffered
        assert gateway.proc.returncode == 0, gateway.logs
        assert "access last-one" in gateway.logs
    # the SQLite store was closed: its write-ahead log was folded into the database
    wal = tmp_path / "bastion.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
