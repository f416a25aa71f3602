"""The vLLM inventory agrees with the endpoint table and with docs/vllm-api.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.pipeline.endpoints import DEFAULT_ENDPOINTS, Endpoint, EndpointKind, EndpointTable
from bastion.policy.roles import INFERENCE, PERMISSIONS
from bastion.upstream.vllm_api import ROUTES, Decision, Kind, Routing, VllmRoute, markdown

ROOT = Path(__file__).resolve().parents[2]
TABLE = EndpointTable(DEFAULT_ENDPOINTS)
FORWARDED = (Decision.INFERENCE, Decision.CONTROL)

OPENAI_ONLY = {"/v1/responses/{id}/input_items"}
"""Endpoints of OpenAI's API that vLLM 0.34 does not serve, allowed for other upstreams
(stored responses' input items; DELETE shares its endpoint with vLLM's GET)."""


def endpoint_of(route: VllmRoute) -> Endpoint | None:
    return TABLE.match(route.sample_path().encode())


def test_every_forwarded_route_is_an_endpoint_of_its_kind_and_permission() -> None:
    missing = []
    for route in ROUTES:
        if route.decision not in FORWARDED:
            continue
        endpoint = endpoint_of(route)
        if endpoint is None:
            missing.append(route.name)
            continue
        assert endpoint.kind == _kind_of(route), route.name
        assert endpoint.permission == route.permission, route.name
        assert set(route.methods) <= endpoint.methods, route.name
    assert missing == []


def _kind_of(route: VllmRoute) -> EndpointKind:
    """A route that names a stored object by id is an endpoint of kind STORED."""
    if route.decision is Decision.INFERENCE and route.routing is Routing.PATH_ID:
        return EndpointKind.STORED
    return EndpointKind(route.decision.value)


def test_every_forwarding_endpoint_is_in_the_inventory() -> None:
    forwarding = (EndpointKind.INFERENCE, EndpointKind.CONTROL, EndpointKind.STORED)
    for endpoint in DEFAULT_ENDPOINTS:
        if endpoint.kind not in forwarding or endpoint.path in OPENAI_ONLY:
            continue
        # the routes the whole table sends to this endpoint (an exact path beats a template)
        found = [r for r in ROUTES if (e := endpoint_of(r)) is not None and e.path == endpoint.path]
        assert [_kind_of(r) for r in found] == [endpoint.kind], endpoint.path


def test_routes_never_forwarded_are_not_endpoints() -> None:
    served = [r.name for r in ROUTES if r.decision is Decision.NEVER and endpoint_of(r)]
    assert served == []


def test_local_routes_are_answered_by_the_gateway() -> None:
    for route in ROUTES:
        if route.decision is Decision.LOCAL:
            endpoint = endpoint_of(route)
            assert endpoint is not None and endpoint.kind is EndpointKind.LOCAL
            assert endpoint.permission == route.permission


def test_endpoint_permissions_are_known_and_inference_is_in_the_inference_group() -> None:
    for endpoint in DEFAULT_ENDPOINTS:
        if not endpoint.public:
            assert endpoint.permission in PERMISSIONS, endpoint.path
        if endpoint.kind is EndpointKind.INFERENCE:
            assert endpoint.permission in INFERENCE, endpoint.path


def test_each_route_is_listed_once_with_a_reason() -> None:
    names = [r.name for r in ROUTES]
    assert len(names) == len(set(names))
    assert all(r.why and r.does and r.registered for r in ROUTES)
    for route in ROUTES:
        assert (route.permission is None) == (route.decision is Decision.NEVER), route.name


@pytest.mark.parametrize(
    ("path", "guarded"),
    [
        ("/v1/chat/completions", True),
        ("/v2/rerank", True),
        ("/inference/v1/generate", True),
        ("/cohere/v2/chat", True),
        ("/tokenize", False),
        ("/invocations", False),
        ("/pause", False),
    ],
)
def test_guarded_follows_vllms_prefix_rule(path: str, guarded: bool) -> None:
    route = next(r for r in ROUTES if r.path == path)
    assert route.guarded is guarded


def test_the_decisions_the_issue_asked_for() -> None:
    decided = {r.name: r.decision for r in ROUTES}
    assert decided["POST /inference/v1/abort_requests"] is Decision.NEVER
    assert decided["POST /abort_requests"] is Decision.NEVER
    assert decided["POST /inference/v1/generate"] is Decision.CONTROL
    assert decided["WS /v1/realtime"] is Decision.NEVER
    kinds = {r.name: r.kind for r in ROUTES}
    assert kinds["POST /collective_rpc"] is Kind.CONTROL
    assert kinds["GET /is_paused"] is Kind.INFO


def test_the_document_is_generated_from_the_inventory() -> None:
    """If this fails: python -m bastion.upstream.vllm_api > docs/vllm-api.md"""
    assert (ROOT / "docs" / "vllm-api.md").read_text() == markdown()
