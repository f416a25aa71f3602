"""A small, blocking client for a remote Bastion's admin API (what the CLI uses with --url)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from bastion.admin.api import PREFIX
from bastion.errors import RemoteError

__all__ = ["AdminClient"]


class AdminClient:
    def __init__(self, base_url: str, key: str, *, timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise RemoteError(f"{base_url!r}: give the gateway's http(s):// URL")
        self._base = base_url.rstrip("/") + PREFIX
        self._key = key
        self._timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        url = self._base + "/" + "/".join(urllib.parse.quote(p, safe="") for p in path.split("/"))
        if query:
            kept = {k: v for k, v in query.items() if v is not None}
            if kept:
                url += "?" + urllib.parse.urlencode(kept)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) checked
        request.add_header("Authorization", f"Bearer {self._key}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RemoteError(_message(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach {self._base}: {reason}") from None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read())["error"]
        return f"{exc.code}: {error['message']}"
    except (ValueError, KeyError, TypeError, OSError):
        return f"{exc.code}: {exc.reason}"
