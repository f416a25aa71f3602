"""A plain HTTP client for the console's server side: keeps cookies as a browser would (only
what the gateway sets, sent back on every request), never follows redirects, and shows
every response header (``Set-Cookie`` included, as sent)."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    def cookies(self) -> list[str]:
        """The ``Set-Cookie`` headers, as sent."""
        return [v for n, v in self.headers if n.lower() == "set-cookie"]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ConsoleClient:
    """Talks to one gateway (``url``: ``http://127.0.0.1:port``)."""

    url: str
    jar: dict[str, str] = field(default_factory=dict)
    always: dict[str, str] = field(default_factory=dict)
    """Headers sent with every request (a test's own ``X-Forwarded-For``...)."""
    context: ssl.SSLContext | None = None
    """For an ``https://`` gateway: the client's TLS context."""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        raw: bytes | None = None,
    ) -> Answer:
        parts = urlsplit(self.url if "://" not in path else path)
        target = (
            path if "://" not in path else (parts.path + ("?" + parts.query if parts.query else ""))
        )
        sent = {**self.always, **(headers or {})}
        content = raw
        if body is not None:
            content = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if self.jar and "Cookie" not in sent:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        connection = (
            http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=10, context=self.context
            )
            if parts.scheme == "https"
            else http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        )
        try:
            connection.request(method, target, body=content, headers=sent)
            response = connection.getresponse()
            answer = Answer(response.status, response.getheaders(), response.read())
        finally:
            connection.close()
        self._keep(answer)
        return answer

    def _keep(self, answer: Answer) -> None:
        for value in answer.cookies():
            name, _, rest = value.partition("=")
            cookie_value = rest.split(";", 1)[0]
            if "Max-Age=0" in value or not cookie_value:
                self.jar.pop(name, None)
            else:
                self.jar[name] = cookie_value

    def sign_in(self, key: str) -> Answer:
        return self.request("POST", "/ui/api/session", {"key": key})

    def admin(
        self, method: str, path: str, csrf: str | None, body: Any = None, **headers: str
    ) -> Answer:
        """An admin API call with the session cookie and (unless None) the CSRF token."""
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        if csrf is not None:
            sent["X-CSRF-Token"] = csrf
        return self.request(method, "/admin/v1/" + path, body, sent)
