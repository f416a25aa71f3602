"""A plain ASGI request for in-process gateway tests (no Bastion server protocol: no
``Downstream``, so the gateway takes its plain-ASGI paths)."""

from __future__ import annotations

from typing import Any


def post_scope(path: str, key: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    """The scope of a ``POST`` to ``path`` from 127.0.0.1 with ``key`` as a bearer token."""
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer " + key.encode()), *headers],
        "client": ("127.0.0.1", 1),
    }
