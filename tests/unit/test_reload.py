"""Which settings a reload applies and which wait for a restart."""

from __future__ import annotations

from bastion.server.reload import keep_fixed
from bastion.settings import parse_settings


def test_the_pools_response_head_limits_wait_for_a_restart() -> None:
    """The pool reads them once, when it is built: a reload that claimed them would lie."""
    running = parse_settings({})
    new = parse_settings({"upstream": {"max_header_bytes": 1024, "max_headers": 10, "retries": 5}})
    effective, restart = keep_fixed(running, new)
    assert set(restart) == {"upstream.max_header_bytes", "upstream.max_headers"}
    assert effective.upstream.max_header_bytes == running.upstream.max_header_bytes
    assert effective.upstream.max_headers == running.upstream.max_headers
    assert effective.upstream.retries == 5  # read per request: applied
