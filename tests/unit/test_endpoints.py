from __future__ import annotations

import pytest

from bastion.pipeline.endpoints import (
    DEFAULT_ENDPOINTS,
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
    assert public == {"/health", "/ready"}


def test_duplicate_or_non_canonical_route_is_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        EndpointTable(DEFAULT_ENDPOINTS + DEFAULT_ENDPOINTS[:1])
    odd = DEFAULT_ENDPOINTS[0].__class__(
        "/x/", frozenset({"GET"}), EndpointKind.LOCAL, DEFAULT_ENDPOINTS[0].body, "x"
    )
    with pytest.raises(ValueError, match="canonical"):
        EndpointTable((odd,))
