"""Schemathesis against a live gateway: requests generated from the admin API's document.

For each operation of the document, schemathesis generates requests that fit its parameters
and body (positive) and requests that break them (negative), plus its own probes (a missing
or wrong credential, a method the path lacks), sends them to a running gateway with a store,
and checks each answer: never a 5xx, a status the operation lists, the described content type,
headers and body schema, a request that breaks the schema refused, 405 naming the path's
methods, 401 without a credential.

One check is left out: ``positive_data_acceptance`` (a request that fits the schema must not
be refused with 400). Some refusals depend on what no schema states: an unknown role, an
unknown permission in ``routes``, a network that is not one, an expiry in the past.

The run is derandomized (CI sends the same requests each time) and bounded: about 1,200
requests, a minute on two busy cores; their number is printed at the end of the module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from bastion.admin.api import description
from tests.support.admin import admin_call
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

KEYS = Keys()
EXAMPLES = 25
"""Per operation and generation mode; schemathesis adds its own probes."""
SCHEMA = schemathesis.openapi.from_dict(description())
SCHEMA.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True
)
SCHEMA.config.checks.update(excluded_check_names=["positive_data_acceptance"])
SENT: Counter[str] = Counter()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(upstream.url, KEYS)
    config["auth"]["brute_force"] = {"max_failures": 0}  # wrong credentials never block the run
    with running_gateway(config, tmp_path_factory.mktemp("schemathesis"), "k") as process:
        for user in ("bob", "carol"):
            assert admin_call(process, KEYS.admin, "POST", "users", {"name": user})[0] == 201
        assert admin_call(process, KEYS.admin, "POST", "teams", {"name": "ml"})[0] == 201
        yield process
        assert process.proc.poll() is None
        assert "Traceback" not in process.logs


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and SENT:
        with capture.global_and_fixture_disabled():  # shown without -s too
            reporter.write_line(f"schemathesis: {SENT.total()} requests, {len(SENT)} operations")


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_gateway_answers_as_its_document_says(
    case: schemathesis.Case, gateway: GatewayProcess
) -> None:
    SENT[case.operation.label] += 1
    case.call_and_validate(
        base_url=gateway.url, headers={"Authorization": f"Bearer {KEYS.admin}"}, timeout=10
    )
