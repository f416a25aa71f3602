"""The headers of every ``/ui`` response, and the console's cookies.

A strict Content-Security-Policy (no inline script or style, nothing from elsewhere, no
framing), plus the older headers that say the same to older browsers. The session cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it),
``Path=/`` (the admin API needs it too) and ``Secure`` whenever the browser reached the
gateway over TLS.
"""

from __future__ import annotations

from bastion.pipeline.endpoints import CONSOLE_HEADERS

__all__ = [
    "API_HEADERS",
    "ASSET_HEADERS",
    "LOGIN_COOKIE",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "clear_cookie",
    "cookie",
    "read_cookie",
]

SECURITY_HEADERS = CONSOLE_HEADERS
"""On every ``/ui`` response, refusals included (the endpoint table carries them)."""

API_HEADERS = ((b"cache-control", b"no-store"),)
"""Answers of the console's API and redirects: never cached."""
ASSET_HEADERS = ((b"cache-control", b"private, max-age=300"),)
"""Static files: briefly cached (they change only with an upgrade)."""

SESSION_COOKIE = "bastion_session"
LOGIN_COOKIE = "bastion_oidc"
"""Binds an OIDC sign-in to the browser that started it (``SameSite=Lax``: the provider's
redirect back is a cross-site navigation, on which a strict cookie is not sent)."""

_MAX_COOKIE_HEADER = 8192


def cookie(
    name: str, value: str, *, max_age: int, secure: bool, path: str = "/", same_site: str = "Strict"
) -> tuple[bytes, bytes]:
    """A ``Set-Cookie`` header (``value`` is URL-safe base64, so it needs no quoting)."""
    parts = [f"{name}={value}", "HttpOnly", f"SameSite={same_site}", f"Path={path}"]
    parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return b"set-cookie", "; ".join(parts).encode("ascii")


def clear_cookie(name: str, *, secure: bool, path: str = "/") -> tuple[bytes, bytes]:
    """A ``Set-Cookie`` header that makes the browser forget the cookie."""
    return cookie(name, "", max_age=0, secure=secure, path=path)


def read_cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of cookie ``name`` in the request's ``Cookie`` headers (None: absent). Of a
    cookie given twice, the first (the most specific path, as browsers order them)."""
    wanted = name.encode("ascii") + b"="
    for header, value in headers:
        if header != b"cookie" or len(value) > _MAX_COOKIE_HEADER:
            continue
        for part in value.split(b";"):
            part = part.strip()
            if part.startswith(wanted):
                found = part[len(wanted) :]
                return found.decode("ascii") if found.isascii() else None
    return None
