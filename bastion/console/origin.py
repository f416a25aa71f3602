"""Is a request cross-site? Browsers say so in ``Sec-Fetch-Site`` and ``Origin``.

Cookies are ``SameSite=Strict`` and every cookie-authenticated call needs the session's CSRF
token, so this is a third, independent check: a state-changing request that a browser marks
as coming from another site, or whose ``Origin`` is not the gateway's own, is refused (403)
before its session is even looked at. Requests without either header (curl, old browsers)
are left to the other two checks.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from bastion.errors import PermissionDeniedError

__all__ = ["SAFE_METHODS", "OriginCheck"]

SAFE_METHODS = frozenset({"GET", "HEAD"})
_SAME = frozenset({b"same-origin", b"none"})


class OriginCheck:
    """Refuses cross-site state-changing requests. ``public_base``: the gateway's public URL
    (``console.oidc.redirect_base``), whose origin is accepted as well as the Host header's."""

    def __init__(self, public_base: str | None = None) -> None:
        self._public = _netloc(public_base.encode()) if public_base is not None else None

    def __call__(self, method: str, headers: list[tuple[bytes, bytes]]) -> None:
        if method in SAFE_METHODS:
            return
        host = origin = site = None
        for name, value in headers:
            if name == b"host":
                host = value.lower()
            elif name == b"origin":
                origin = value
            elif name == b"sec-fetch-site":
                site = value.lower()
        if site is not None and site not in _SAME:
            raise _refused()
        if origin is None:
            return
        netloc = _netloc(origin)
        if netloc is None or (netloc != host and netloc != self._public):
            raise _refused()


def _netloc(origin: bytes) -> bytes | None:
    """``host[:port]`` of an origin (``https://gw.example.com:8443``); None for ``null`` and
    anything that is not an http(s) origin."""
    try:
        parts = urlsplit(origin.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.lower().encode("ascii")


def _refused() -> PermissionDeniedError:
    return PermissionDeniedError("Cross-site requests are refused.", code="cross_site")
