"""The client of a running Bastion's admin API: the one place that knows how to call it.

Requests are made by the operations of :data:`bastion.admin.api.OPERATIONS` (path, query and
body from the same declarations the API parses), so a caller names an operation and its
values, never a URL::

    client = AdminClient("https://gateway:8443", key)
    client.call("users.create", name="ada", role="operator")
    client.call("keys.list", user="ada", include_revoked=True)["data"]

It is blocking and needs nothing but the standard library (the CLI's ``--url`` mode uses it;
so can scripts and tests). A browser console calls the same endpoints from the OpenAPI
document the gateway serves (``GET /admin/v1/openapi.json``), which is made from the same
table.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from bastion.admin.api import ROUTER
from bastion.admin.operations import Request
from bastion.errors import RemoteError

__all__ = ["AdminClient", "Answer"]


@dataclass(frozen=True, slots=True)
class Answer:
    """An admin API response: its status, headers (names in lower case) and parsed JSON body
    (an error, too, is JSON: ``{"error": {...}}``)."""

    status: int
    headers: dict[str, str]
    body: Any


class AdminClient:
    def __init__(self, base_url: str, key: str, *, timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise RemoteError(f"{base_url!r}: give the gateway's http(s):// URL")
        self._base = base_url.rstrip("/")
        self._key = key
        self._timeout = timeout

    def call(self, operation: str, /, **values: Any) -> Any:
        """Perform the operation named ``operation`` (``users.create``) with ``values`` (None:
        not given); its parsed JSON answer. A refusal raises :class:`RemoteError`."""
        return self.send(ROUTER.by_name[operation].request(values))

    def send(self, request: Request) -> Any:
        """Send one admin request (built by its operation); the parsed JSON answer. A refusal
        raises :class:`RemoteError` with its status and message."""
        answer = self.exchange(request)
        if answer.status >= 400:
            raise RemoteError(_message(answer))
        return answer.body

    def exchange(self, request: Request) -> Answer:
        """Send one admin request; whatever the gateway answered (errors too)."""
        url = self._base + request.path + (f"?{request.query}" if request.query else "")
        data = request.body or None
        sent = urllib.request.Request(url, data=data, method=request.method)  # noqa: S310 - http(s) checked
        sent.add_header("Authorization", f"Bearer {self._key}")
        sent.add_header("Accept", "application/json")
        if data is not None:
            sent.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(sent, timeout=self._timeout) as response:  # noqa: S310
                return _answer(response.status, response.reason, response.headers, response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return _answer(exc.code, exc.reason, exc.headers, exc.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach {self._base}: {reason}") from None


def _answer(status: int, reason: str, headers: Any, content: bytes) -> Answer:
    try:
        body = json.loads(content or b"null")
    except ValueError:  # not Bastion's answer: a proxy's error page, say
        raise RemoteError(f"{status}: {reason}") from None
    return Answer(status, {name.lower(): value for name, value in headers.items()}, body)


def _message(answer: Answer) -> str:
    try:
        return f"{answer.status}: {answer.body['error']['message']}"
    except (KeyError, TypeError):
        return f"{answer.status}: refused"
