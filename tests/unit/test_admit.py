"""Phase admit: the completion a request reserves is read from its body as the engine reads it.

vLLM's request models declare these fields ``int`` and pydantic (lax) reads a float with no
fractional part as that integer, so ``5e9`` is five billion tokens to the engine: it must be to
the limits too. Anything the engine would not read as a count the gateway refuses itself.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bastion.auth.identity import Identity
from bastion.errors import BadRequestError
from bastion.limits.limiter import Grant, Limiter, MemoryLimiter
from bastion.limits.plan import Bucket, Planner
from bastion.pipeline.admit import Admit
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import EndpointTable
from bastion.settings import parse_settings

DEFAULT = 1024
CHAT = "/v1/chat/completions"


class RecordingLimiter:
    """The in-memory limiter, remembering what each request asked to reserve (a wrapper, not
    a subclass: the compiled build's limiter cannot be subclassed by Python code)."""

    def __init__(self) -> None:
        self._limiter = MemoryLimiter()
        self.asked: list[tuple[int, int]] = []

    async def acquire(self, buckets: tuple[Bucket, ...], prompt: int, completion: int) -> Grant:
        self.asked.append((prompt, completion))
        return await self._limiter.acquire(buckets, prompt, completion)

    def finish(self, grant: Grant, prompt: int, completion: int) -> None:
        self._limiter.finish(grant, prompt, completion)

    async def aclose(self) -> None:
        await self._limiter.aclose()


def admit_phase(limiter: Limiter, tokens_per_minute: int = 10**12) -> Admit:
    settings = parse_settings({"limits": {"per_key": {"tokens_per_minute": tokens_per_minute}}})
    return Admit(Planner(settings.limits), limiter, DEFAULT)


async def _receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _send(message: dict[str, Any]) -> None:
    return None


def request(body: dict[str, Any] | bytes, path: str = CHAT) -> RequestContext:
    scope = {"type": "http", "method": "POST", "headers": []}
    ctx = RequestContext(scope, _receive, _send)
    ctx.identity = Identity("alice", "user", "k1", "api_key")
    ctx.endpoint = EndpointTable().match(path.encode())
    ctx.body = body if isinstance(body, bytes) else orjson.dumps(body)
    ctx.json = orjson.loads(ctx.body)
    return ctx


async def reserved(body: dict[str, Any] | bytes, path: str = CHAT) -> int:
    limiter = RecordingLimiter()
    await admit_phase(limiter)(request(body, path), "m")
    [(_, completion)] = limiter.asked
    return completion


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens", "max_output_tokens"])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"5", 5),
        (b"5.0", 5),
        (b"5e9", 5_000_000_000),
        (b"2147483648.0", 2_147_483_648),
        (b"1E2", 100),
        (b"null", DEFAULT),
        (b"0", DEFAULT),  # the engine reads 0 as "not set" too
        (b"-0.0", DEFAULT),
    ],
)
async def test_an_integral_number_reserves_its_value(field: str, raw: bytes, expected: int) -> None:
    body = b'{"model": "m", "messages": [], "%s": %s}' % (field.encode(), raw)
    assert await reserved(body) == expected


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens", "max_output_tokens"])
@pytest.mark.parametrize(
    "value",
    [5.5, 5.000001, -1, -5.0, True, False, "5", "5e9", [5], {"n": 5}],
    ids=repr,
)
async def test_anything_else_is_refused_naming_the_field(field: str, value: Any) -> None:
    limiter = RecordingLimiter()
    with pytest.raises(BadRequestError) as refused:
        await admit_phase(limiter)(request({"model": "m", field: value}), "m")
    assert (refused.value.status, refused.value.type) == (400, "invalid_request_error")
    assert refused.value.param == field
    negative = type(value) in (int, float) and value < 0
    assert refused.value.code == ("integer_below_min_value" if negative else "invalid_type")
    assert limiter.asked == []  # refused before anything was taken


async def test_a_float_too_large_for_the_limit_is_refused_like_the_same_integer() -> None:
    for raw in (b"5000000000", b"5e9", b"5000000000.0"):
        body = b'{"model": "m", "max_tokens": %s}' % raw
        with pytest.raises(BadRequestError) as refused:
            await admit_phase(MemoryLimiter(), tokens_per_minute=10_000)(request(body), "m")
        assert (refused.value.code, refused.value.param) == ("tokens_exceed_limit", "max_tokens")


async def test_when_several_are_set_the_largest_is_reserved() -> None:
    # engines disagree on which wins (and some read only one of them): reserve for the worst
    body = {"model": "m", "max_completion_tokens": 10, "max_tokens": 5e3}
    assert await reserved(body) == 5000
    assert await reserved({**body, "max_tokens": 0}) == 10
    assert await reserved(body, "/v1/completions") == 5000


@pytest.mark.parametrize(("n", "expected"), [(1, 100), (3, 300), (3.0, 300), (None, 100)])
async def test_each_of_n_choices_reserves_its_completion(n: Any, expected: int) -> None:
    assert await reserved({"model": "m", "max_tokens": 100, "n": n}) == expected
    assert await reserved({"model": "m", "n": n}) == expected // 100 * DEFAULT


@pytest.mark.parametrize("n", [0, -1, 2.5, "2", True])
async def test_an_n_the_engine_would_not_read_as_a_count_is_refused(n: Any) -> None:
    with pytest.raises(BadRequestError) as refused:
        await admit_phase(RecordingLimiter())(request({"model": "m", "n": n}), "m")
    assert refused.value.param == "n"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"stream": "true"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream": True, "stream_options": "yes"}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ],
)
async def test_stream_flags_must_be_booleans(body: dict[str, Any], param: str) -> None:
    """The engine reads "true" and 1 as true; the gateway, which asks a stream for its usage
    only when it sees one, would not: it refuses them instead."""
    with pytest.raises(BadRequestError) as refused:
        await admit_phase(RecordingLimiter())(request({"model": "m", **body}), "m")
    assert refused.value.param == param


async def test_fields_of_routes_that_generate_nothing_are_not_read() -> None:
    limiter = RecordingLimiter()
    await admit_phase(limiter)(request({"model": "m", "max_tokens": "x"}, "/v1/embeddings"), "m")
    assert limiter.asked[0][1] == 0
