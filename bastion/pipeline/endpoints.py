"""The endpoint table: every path the gateway answers is an explicit entry; all else is 404.

(Users know an endpoint's permission as a "route": roles' ``routes``, keys' ``--routes``, the
``routes`` settings section and the ``route`` label of logs and metrics. In the code an
endpoint is an entry of this table, and "route" is the phase that picks an upstream.)

Decisions are taken on the raw ASGI path (``scope["raw_path"]``), never on a URL rebuilt from
the Host header. A raw path that is not byte-for-byte a known endpoint is canonicalized once:
percent-escapes are decoded (once), empty and ``.`` segments dropped, ``..`` resolved, a
trailing slash removed. The canonical form is then looked up, and it is what gets forwarded,
so the upstream always receives exactly the path the decision was made on. A path that
cannot be canonicalized (non-ASCII, NUL, backslash, an invalid escape) matches nothing.

Which of vLLM's routes are endpoints here, and why each other one is not, is decided in
``bastion/upstream/vllm_api.py`` (docs/vllm-api.md); a test keeps the two in agreement.
A few entries name an object the upstream keeps: their path has one ``{id}`` segment
(``/v1/responses/{id}``). It matches a canonical path whose segment there is a safe token,
1 to 128 of ``[A-Za-z0-9_-]``, and nothing else; the entry then comes back bound to that id
(:attr:`Endpoint.resource`), its ``path`` still the template (what logs and metrics show),
its ``target`` the concrete path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from urllib.parse import unquote_to_bytes

__all__ = [
    "ADMIN_ENDPOINT",
    "CONSOLE_ENDPOINTS",
    "CONSOLE_HEADERS",
    "READY_ENDPOINT",
    "READY_VERBOSE",
    "RESOURCE_ID",
    "BodyKind",
    "Endpoint",
    "EndpointKind",
    "EndpointTable",
    "canonical_path",
]


class EndpointKind(StrEnum):
    INFERENCE = "inference"
    """Forwarded to the upstream chosen by the request's model."""
    LOCAL = "local"
    """Answered by the gateway itself."""
    CONTROL = "control"
    """A model server's control endpoint: forwarded only to administrators, and only if enabled."""
    ADMIN = "admin"
    """Bastion's own admin API (``/admin/v1/...``), answered by the gateway."""
    STORED = "stored"
    """An object an upstream keeps (a stored response), named in the path: forwarded only
    for its owner, to the upstream that keeps it (see :mod:`.ownership`)."""
    CONSOLE = "console"
    """The web console (``/ui``), answered by the gateway: its pages, sign-in and sessions
    (credentials are its own business: a key in a JSON body, OIDC, a session cookie)."""


class BodyKind(StrEnum):
    JSON = "json"
    MULTIPART = "multipart"
    NONE = "none"
    ANY = "any"


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    methods: frozenset[str]
    kind: EndpointKind
    body: BodyKind
    permission: str
    """The permission a caller needs (coarse; refined by the identity and access work)."""
    public: bool = False
    """Answered without an ``Authorization`` credential: liveness and readiness, and the
    console's routes (which check credentials of their own)."""
    prefix: bool = False
    """Also matches every path below this one (the admin API only)."""
    anthropic: bool = False
    """Anthropic's Messages API: the key may come in ``x-api-key``, refusals are
    Anthropic-shaped (``{"type": "error", "error": {...}}``)."""
    stores: bool = False
    """Its answer may create an object the upstream keeps (``POST /v1/responses``): the
    object's id is read from the answer and its owner remembered."""
    resource: str | None = None
    """For an entry whose path has an ``{id}`` segment: the id this request named (the
    entry as matched is a copy bound to it)."""
    also: str | None = None
    """A second permission that lets a caller in as well (the admin API: ``console``, whose
    holders the API itself then limits to its read-only operations)."""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    """Sent with every response the gateway makes on it, refusals included (the console's
    security headers)."""

    target: bytes = field(init=False, repr=False, compare=False)
    """The path to forward: the canonical path the decision was made on (made once)."""

    def __post_init__(self) -> None:
        path = self.path if self.resource is None else self.path.replace(_ID_SEGMENT, self.resource)
        object.__setattr__(self, "target", path.encode("ascii"))


_ID_SEGMENT = "{id}"
RESOURCE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What an id in a path may be: anything else matches no endpoint."""


def _inference(path: str, permission: str, body: BodyKind = BodyKind.JSON) -> Endpoint:
    return Endpoint(path, frozenset({"POST"}), EndpointKind.INFERENCE, body, permission)


def _stored(path: str, *methods: str) -> Endpoint:
    return Endpoint(path, frozenset(methods), EndpointKind.STORED, BodyKind.NONE, "responses")


def _control(path: str) -> Endpoint:
    return Endpoint(path, frozenset({"GET", "POST"}), EndpointKind.CONTROL, BodyKind.ANY, "control")


_GET = frozenset({"GET"})
_POST = frozenset({"POST"})

ADMIN_ENDPOINT = Endpoint(
    "/admin/v1",
    frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"}),
    EndpointKind.ADMIN,
    BodyKind.ANY,
    "admin",
    prefix=True,
    also="console",
)

METRICS_ENDPOINT = Endpoint("/bastion/metrics", _GET, EndpointKind.LOCAL, BodyKind.NONE, "metrics")
"""Bastion's own Prometheus metrics (vLLM's are ``/metrics``, a control endpoint)."""

READY_ENDPOINT = Endpoint("/ready", _GET, EndpointKind.LOCAL, BodyKind.NONE, "health", public=True)

READY_VERBOSE = Endpoint("/ready", _GET, EndpointKind.LOCAL, BodyKind.NONE, "metrics")
"""``/ready?verbose``: never matched on its own; a verbose ``/ready`` becomes it, and so needs
the ``metrics`` permission (it names the models, as the metrics do)."""

CONSOLE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        b"base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
"""On every ``/ui`` response: a strict Content-Security-Policy (no inline script or style,
nothing from elsewhere, no framing) and the older headers that say the same."""


def _console(path: str, *methods: str, prefix: bool = False) -> Endpoint:
    return Endpoint(
        path, frozenset(methods), EndpointKind.CONSOLE, BodyKind.ANY, "console",
        public=True, prefix=prefix, headers=CONSOLE_HEADERS,
    )  # fmt: skip


CONSOLE_ENDPOINTS: tuple[Endpoint, ...] = (
    _console("/ui", "GET", prefix=True),  # the pages: /ui/ and the files below it
    _console("/ui/api/session", "GET", "POST", "DELETE"),
    _console("/ui/api/oidc/config", "GET"),
    _console("/ui/oidc/start", "GET"),
    _console("/ui/oidc/callback", "GET"),
)
"""The console's entries (``public``: no ``Authorization`` header is asked for; each checks
its own credential). Only with the console on (``app.build_endpoints``)."""

DEFAULT_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/health", _GET, EndpointKind.LOCAL, BodyKind.NONE, "health", public=True),
    READY_ENDPOINT,
    Endpoint("/v1/models", _GET, EndpointKind.LOCAL, BodyKind.NONE, "models"),
    METRICS_ENDPOINT,
    _inference("/v1/chat/completions", "chat"),
    _inference("/v1/completions", "completions"),
    _inference("/v1/embeddings", "embeddings"),
    Endpoint(
        "/v1/responses",
        frozenset({"POST"}),
        EndpointKind.INFERENCE,
        BodyKind.JSON,
        "responses",
        stores=True,
    ),
    _stored("/v1/responses/{id}", "GET", "DELETE"),
    _stored("/v1/responses/{id}/cancel", "POST"),
    _stored("/v1/responses/{id}/input_items", "GET"),
    Endpoint("/v1/messages", _POST, EndpointKind.INFERENCE, BodyKind.JSON, "chat", anthropic=True),
    Endpoint(
        "/v1/messages/count_tokens",
        _POST,
        EndpointKind.INFERENCE,
        BodyKind.JSON,
        "tokenize",
        anthropic=True,
    ),
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
    _inference("/generative_scoring", "score"),
    _inference("/v1/decisions", "decisions"),
    _inference("/v1/systemone", "decisions"),
    ADMIN_ENDPOINT,
    *CONSOLE_ENDPOINTS,
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
            "/kv_event_sources",
            "/tokenizer_info",
            "/inference/v1/generate",
            "/v1/chat/completions/render",
            "/v1/completions/render",
            "/v1/messages/render",
            "/v1/responses/render",
            "/v1/chat/completions/derender",
            "/v1/completions/derender",
            "/reset_encoder_cache",
            "/release_kv_cache_memory",
            "/checkpoint/prepare",
            "/checkpoint/restore",
            "/checkpoint/status",
            "/v1/fault_tolerance/apply",
            "/v1/fault_tolerance/status",
            "/init_weight_transfer_engine",
            "/shutdown_weight_transfer_engine",
            "/start_weight_update",
            "/start_draft_weight_update",
            "/finish_weight_update",
            "/update_weight_version",
            "/weight_info",
            "/weight_checker",
            "/get_world_size",
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


class EndpointTable:
    """Looks endpoints up by raw path; the fast path is one dict lookup on the raw bytes."""

    def __init__(self, endpoints: tuple[Endpoint, ...] = DEFAULT_ENDPOINTS) -> None:
        self._by_path: dict[str, Endpoint] = {}
        templates: list[tuple[int, int, list[str], Endpoint]] = []
        for endpoint in endpoints:
            if endpoint.path in self._by_path:
                raise ValueError(f"duplicate endpoint {endpoint.path}")
            if canonical_path(endpoint.target) != endpoint.path:
                raise ValueError(f"endpoint {endpoint.path} is not in canonical form")
            self._by_path[endpoint.path] = endpoint
            if "{" in endpoint.path:
                templates.append(_template(endpoint))
        exact = [r for r in endpoints if "{" not in r.path]
        self._by_raw: dict[bytes, Endpoint] = {r.target: r for r in exact}
        self._exact = {r.path: r for r in exact}
        self._templates = tuple(templates)
        self._prefixes = tuple((r.path + "/", r) for r in endpoints if r.prefix)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._by_path.values())

    def match(self, raw_path: bytes) -> Endpoint | None:
        """The endpoint for a raw path, or None when the gateway does not serve it."""
        endpoint = self._by_raw.get(raw_path)
        if endpoint is not None:
            return endpoint
        path = canonical_path(raw_path)
        if path is None:
            return None
        endpoint = self._exact.get(path)
        if endpoint is not None:
            return endpoint
        if self._templates:
            endpoint = self._bound(path)
            if endpoint is not None:
                return endpoint
        for start, candidate in self._prefixes:
            if path.startswith(start):
                return candidate
        return None

    def _bound(self, path: str) -> Endpoint | None:
        """The entry with an ``{id}`` segment that ``path`` fits, bound to its id."""
        segments = path.split("/")
        for length, at, literal, endpoint in self._templates:
            if len(segments) != length or RESOURCE_ID.fullmatch(segments[at]) is None:
                continue
            if segments[:at] + segments[at + 1 :] == literal:
                return replace(endpoint, resource=segments[at])
        return None


def _template(endpoint: Endpoint) -> tuple[int, int, list[str], Endpoint]:
    """An entry with an ``{id}`` segment: its segment count, where the id is, the other
    segments."""
    segments = endpoint.path.split("/")
    if segments.count(_ID_SEGMENT) != 1 or "{" in endpoint.path.replace(_ID_SEGMENT, ""):
        raise ValueError(f"endpoint {endpoint.path} must have exactly one {_ID_SEGMENT} segment")
    if endpoint.prefix:
        raise ValueError(f"endpoint {endpoint.path} cannot be both a template and a prefix")
    at = segments.index(_ID_SEGMENT)
    return len(segments), at, segments[:at] + segments[at + 1 :], endpoint
