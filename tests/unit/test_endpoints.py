from __future__ import annotations

import pytest

from bastion.pipeline.endpoints import (
    DEFAULT_ENDPOINTS,
    BodyKind,
    Endpoint,
    EndpointKind,
    EndpointTable,
    canonical_path,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"/v1/models", "/v1/models"),
        (b"//v1/models", "/v1/models"),
        (b"/v1/models/", "/v1/models"),
        (b"/v1/./models", "/v1/models"),
        (b"/v1/x/../models", "/v1/models"),
        (b"/../../v1/models", "/v1/models"),
        (b"/v1/%6dodels", "/v1/models"),
        (b"/v1%2Fmodels", "/v1/models"),
        (b"/v1/%2e%2e/pause", "/pause"),
        (b"/", "/"),
        (b"/%252e%252e/pause", "/%2e%2e/pause"),
    ],
)
def test_canonical_path(raw: bytes, canonical: str) -> None:
    assert canonical_path(raw) == canonical


@pytest.mark.parametrize(
    "raw", [b"v1/models", b"/v1\\models", b"/v1/%5cmodels", b"/v1/\xc3\xa9", b"/v1/%00", b"/a\x01"]
)
def test_paths_without_a_canonical_form(raw: bytes) -> None:
    assert canonical_path(raw) is None


def test_table_matches_only_known_routes() -> None:
    table = EndpointTable()
    route = table.match(b"//v1/chat/completions/")
    assert route is not None and route.path == "/v1/chat/completions"
    assert table.match(b"/v1/chat") is None
    assert table.match(b"/v1/%2e%2e/v1/models") is not None


def test_every_default_route_is_canonical_and_inference_routes_are_post() -> None:
    table = EndpointTable()
    assert {r.path for r in table} == {r.path for r in DEFAULT_ENDPOINTS}
    for route in DEFAULT_ENDPOINTS:
        if route.kind is EndpointKind.INFERENCE:
            assert route.methods == frozenset({"POST"})
    public = {r.path for r in DEFAULT_ENDPOINTS if r.public}
    console = {r.path for r in DEFAULT_ENDPOINTS if r.kind is EndpointKind.CONSOLE}
    assert public == {"/health", "/ready"} | console
    assert console == {
        "/ui", "/ui/api/session", "/ui/api/oidc/config", "/ui/oidc/start", "/ui/oidc/callback"
    }  # fmt: skip
    for route in DEFAULT_ENDPOINTS:  # each console answer carries the security headers
        assert (route.kind is EndpointKind.CONSOLE) == bool(route.headers), route.path


def test_duplicate_or_non_canonical_route_is_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        EndpointTable(DEFAULT_ENDPOINTS + DEFAULT_ENDPOINTS[:1])
    odd = DEFAULT_ENDPOINTS[0].__class__(
        "/x/", frozenset({"GET"}), EndpointKind.LOCAL, DEFAULT_ENDPOINTS[0].body, "x"
    )
    with pytest.raises(ValueError, match="canonical"):
        EndpointTable((odd,))


@pytest.mark.parametrize(
    ("raw", "template", "resource", "target"),
    [
        (b"/v1/responses/resp_1a", "/v1/responses/{id}", "resp_1a", b"/v1/responses/resp_1a"),
        (b"//v1/responses/r-1/", "/v1/responses/{id}", "r-1", b"/v1/responses/r-1"),
        (b"/v1/responses/r%5F1", "/v1/responses/{id}", "r_1", b"/v1/responses/r_1"),
        (b"/v1/responses/r/cancel", "/v1/responses/{id}/cancel", "r", b"/v1/responses/r/cancel"),
        (b"/v1/x/../responses/r%2Fcancel", "/v1/responses/{id}/cancel", "r", None),
        (b"/v1/responses/r/input_items", "/v1/responses/{id}/input_items", "r", None),
        (b"/v1/responses/" + b"a" * 128, "/v1/responses/{id}", "a" * 128, None),
    ],
)
def test_an_id_in_the_path_binds_the_entry(
    raw: bytes, template: str, resource: str, target: bytes | None
) -> None:
    endpoint = EndpointTable().match(raw)
    assert endpoint is not None
    assert (endpoint.path, endpoint.resource, endpoint.kind) == (
        template,
        resource,
        EndpointKind.STORED,
    )
    assert endpoint.target == (target or template.replace("{id}", resource).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b"/v1/responses/a.b",
        b"/v1/responses/a:b",
        b"/v1/responses/" + b"a" * 129,
        b"/v1/responses/%7Bid%7D",
        b"/v1/responses/{id}",
        b"/v1/responses/a%20b",
        b"/v1/responses/r/cancel/x",
        b"/v1/responses/r/other",
        b"/v1/responses/r/..",  # that is /v1/responses: the create, not a stored response
    ],
)
def test_anything_but_a_safe_id_binds_no_stored_entry(raw: bytes) -> None:
    endpoint = EndpointTable().match(raw)
    assert endpoint is None or endpoint.kind is not EndpointKind.STORED


def test_exact_paths_keep_their_fast_lookup_and_the_template_its_label() -> None:
    table = EndpointTable()
    create = table.match(b"/v1/responses")
    assert create is not None and create.stores and create.resource is None
    assert table.match(b"/v1/responses") is create  # the same entry: no copy per request
    first, second = table.match(b"/v1/responses/a"), table.match(b"/v1/responses/b")
    assert first is not None and second is not None
    assert first.path == second.path == "/v1/responses/{id}"  # one label for logs and metrics


def test_a_template_needs_exactly_one_id_segment() -> None:
    def stored(path: str) -> Endpoint:
        return Endpoint(path, frozenset({"GET"}), EndpointKind.STORED, BodyKind.NONE, "x")

    for bad in ("/a/{id}/{id}", "/a/{name}", "/a/x{id}"):
        with pytest.raises(ValueError, match="exactly one"):
            EndpointTable((stored(bad),))
    prefix = Endpoint("/a/{id}", frozenset({"GET"}), EndpointKind.ADMIN, BodyKind.ANY, "x",
                      prefix=True)  # fmt: skip
    with pytest.raises(ValueError, match="prefix"):
        EndpointTable((prefix,))
