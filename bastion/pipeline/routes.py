"""The route table: every path the gateway answers is an explicit entry; all else is 404.

Decisions are taken on the raw ASGI path (``scope["raw_path"]``), never on a URL rebuilt from
the Host header. A raw path that is not byte-for-byte a known route is canonicalized once:
percent-escapes are decoded (once), empty and ``.`` segments dropped, ``..`` resolved, a
trailing slash removed. The canonical form is then looked up, and it is what gets forwarded,
so the upstream always receives exactly the path the decision was made on. A path that
cannot be canonicalized (non-ASCII, NUL, backslash, an invalid escape) matches nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote_to_bytes

__all__ = ["ADMIN_ROUTE", "BodyKind", "Route", "RouteKind", "RouteTable", "canonical_path"]


class RouteKind(StrEnum):
    INFERENCE = "inference"
    """Forwarded to the upstream chosen by the request's model."""
    LOCAL = "local"
    """Answered by the gateway itself."""
    CONTROL = "control"
    """A model server's control route: forwarded only to administrators, and only if enabled."""
    ADMIN = "admin"
    """Bastion's own admin API (``/admin/v1/...``), answered by the gateway."""


class BodyKind(StrEnum):
    JSON = "json"
    MULTIPART = "multipart"
    NONE = "none"
    ANY = "any"


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    methods: frozenset[str]
    kind: RouteKind
    body: BodyKind
    permission: str
    """The permission a caller needs (coarse; refined by the identity and access work)."""
    public: bool = False
    """Answered without a credential (liveness and readiness only)."""
    prefix: bool = False
    """Also matches every path below this one (the admin API only)."""

    @property
    def target(self) -> bytes:
        return self.path.encode("ascii")


def _inference(path: str, permission: str, body: BodyKind = BodyKind.JSON) -> Route:
    return Route(path, frozenset({"POST"}), RouteKind.INFERENCE, body, permission)


def _control(path: str) -> Route:
    return Route(path, frozenset({"GET", "POST"}), RouteKind.CONTROL, BodyKind.ANY, "control")


_GET = frozenset({"GET"})

ADMIN_ROUTE = Route(
    "/admin/v1",
    frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"}),
    RouteKind.ADMIN,
    BodyKind.ANY,
    "admin",
    prefix=True,
)

METRICS_ROUTE = Route("/bastion/metrics", _GET, RouteKind.LOCAL, BodyKind.NONE, "metrics")
"""Bastion's own Prometheus metrics (vLLM's are ``/metrics``, a control route)."""

DEFAULT_ROUTES: tuple[Route, ...] = (
    Route("/health", _GET, RouteKind.LOCAL, BodyKind.NONE, "health", public=True),
    Route("/ready", _GET, RouteKind.LOCAL, BodyKind.NONE, "health", public=True),
    Route("/v1/models", _GET, RouteKind.LOCAL, BodyKind.NONE, "models"),
    METRICS_ROUTE,
    _inference("/v1/chat/completions", "chat"),
    _inference("/v1/completions", "completions"),
    _inference("/v1/embeddings", "embeddings"),
    _inference("/v1/responses", "responses"),
    _inference("/v1/audio/transcriptions", "audio", BodyKind.MULTIPART),
    _inference("/v1/audio/translations", "audio", BodyKind.MULTIPART),
    _inference("/tokenize", "tokenize"),
    _inference("/detokenize", "tokenize"),
    _inference("/pooling", "pooling"),
    _inference("/classify", "classify"),
    _inference("/score", "score"),
    _inference("/v1/score", "score"),
    _inference("/rerank", "rerank"),
    _inference("/v1/rerank", "rerank"),
    _inference("/v2/rerank", "rerank"),
    _inference("/invocations", "invocations"),
    ADMIN_ROUTE,
    *(
        _control(p)
        for p in (
            "/pause",
            "/resume",
            "/is_paused",
            "/update_weights",
            "/collective_rpc",
            "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter",
            "/sleep",
            "/wake_up",
            "/is_sleeping",
            "/reset_prefix_cache",
            "/reset_mm_cache",
            "/scale_elastic_ep",
            "/is_scaling_elastic_ep",
            "/metrics",
            "/server_info",
            "/load",
            "/start_profile",
            "/stop_profile",
            "/version",
        )
    ),
)

_FORBIDDEN_BYTES = frozenset(b"\\\x00") | frozenset(range(0x80, 0x100)) | frozenset(range(0x20))


def canonical_path(raw: bytes) -> str | None:
    """Return the canonical form of a raw request path, or None if it has none."""
    if not raw.startswith(b"/"):
        return None
    try:
        decoded = unquote_to_bytes(raw) if b"%" in raw else raw
    except ValueError:  # pragma: no cover - unquote_to_bytes leaves bad escapes as they are
        return None
    if not _FORBIDDEN_BYTES.isdisjoint(decoded):
        return None
    segments: list[str] = []
    for segment in decoded.decode("ascii").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


class RouteTable:
    """Looks routes up by raw path; the fast path is one dict lookup on the raw bytes."""

    def __init__(self, routes: tuple[Route, ...] = DEFAULT_ROUTES) -> None:
        self._by_path: dict[str, Route] = {}
        for route in routes:
            if route.path in self._by_path:
                raise ValueError(f"duplicate route {route.path}")
            if canonical_path(route.target) != route.path:
                raise ValueError(f"route {route.path} is not in canonical form")
            self._by_path[route.path] = route
        self._by_raw: dict[bytes, Route] = {r.target: r for r in routes}
        self._prefixes = tuple((r.path + "/", r) for r in routes if r.prefix)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._by_path.values())

    def match(self, raw_path: bytes) -> Route | None:
        """The route for a raw path, or None when the gateway does not serve it."""
        route = self._by_raw.get(raw_path)
        if route is not None:
            return route
        path = canonical_path(raw_path)
        if path is None:
            return None
        route = self._by_path.get(path)
        if route is None:
            for start, candidate in self._prefixes:
                if path.startswith(start):
                    return candidate
        return route
