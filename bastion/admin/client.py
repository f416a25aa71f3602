"""A small, blocking client for a remote Bastion's admin API (what the CLI uses with --url)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from bastion.admin.operations import Request
from bastion.errors import RemoteError

__all__ = ["AdminClient"]


class AdminClient:
    def __init__(self, base_url: str, key: str, *, timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise RemoteError(f"{base_url!r}: give the gateway's http(s):// URL")
        self._base = base_url.rstrip("/")
        self._key = key
        self._timeout = timeout

    def send(self, request: Request) -> Any:
        """Send one admin request (built by its operation); the parsed JSON answer."""
        url = self._base + request.path + (f"?{request.query}" if request.query else "")
        data = request.body or None
        sent = urllib.request.Request(url, data=data, method=request.method)  # noqa: S310 - http(s) checked
        sent.add_header("Authorization", f"Bearer {self._key}")
        sent.add_header("Accept", "application/json")
        if data is not None:
            sent.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(sent, timeout=self._timeout) as response:  # noqa: S310
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
