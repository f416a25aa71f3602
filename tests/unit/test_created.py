"""Reading a created response's id from the upstream's answer, however it is cut."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from bastion.pipeline.created import CreatedResponse
from bastion.settings import ResponsesSettings
from bastion.store.owners import ResponseOwner, ResponseOwners

OWNER = ResponseOwner("alice", "m", "up:8000")
RESPONSE = {"id": "resp_abc", "object": "response", "status": "completed", "usage": None}


def _sse(*events: tuple[str, dict[str, object]], newline: bytes = b"\n") -> bytes:
    out = b""
    for kind, data in events:
        out += b"event: " + kind.encode() + newline + b"data: " + orjson.dumps(data)
        out += newline + newline
    return out


STREAM = _sse(
    ("response.created", {"response": RESPONSE, "sequence_number": 0, "type": "response.created"}),
    ("response.in_progress", {"response": {**RESPONSE, "id": "resp_other"}, "type": "x"}),
)


def _tap(status: int = 200, sse: bool = True, limit: int = 1 << 20) -> tuple[
    CreatedResponse, ResponseOwners
]:  # fmt: skip
    owners = ResponseOwners(ResponsesSettings())
    tap = CreatedResponse(owners, "alice", "m", limit)
    tap.begin("up:8000", status, sse)
    return tap, owners


def _known(owners: ResponseOwners) -> dict[str, ResponseOwner]:
    """What the owners (memory only) know of the ids the tests use."""

    async def known() -> dict[str, ResponseOwner]:
        found = {rid: await owners.owner(rid) for rid in ("resp_abc", "resp_other")}
        return {rid: owner for rid, owner in found.items() if owner is not None}

    return asyncio.run(known())


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_a_stream_cut_anywhere_gives_the_id_of_its_first_event(size: int) -> None:
    tap, owners = _tap()
    for at in range(0, len(STREAM), size):
        if tap.open:
            tap.feed(STREAM[at : at + size])
    assert not tap.open
    assert _known(owners) == {"resp_abc": OWNER}


def test_crlf_events_and_several_data_lines() -> None:
    tap, owners = _tap()
    data = orjson.dumps({"type": "response.created", "response": RESPONSE}).decode()
    half = len(data) // 2
    tap.feed(f"event: response.created\r\ndata: {data[:half]}\r\ndata:{data[half:]}".encode())
    assert tap.open
    tap.feed(b"\r\n\r\n")
    assert _known(owners) == {"resp_abc": OWNER}


@pytest.mark.parametrize(
    "stream",
    [
        _sse(("response.in_progress", {"type": "response.in_progress", "response": RESPONSE})),
        b": a comment first\n\n" + STREAM,
        b"data: not json\n\n" + STREAM,
        _sse(("response.created", {"type": "response.created", "response": {"id": "a.b"}})),
        _sse(("response.created", {"type": "response.created", "response": {"id": 7}})),
        _sse(("response.created", {"type": "response.created", "response": "resp_abc"})),
    ],
)
def test_only_a_first_response_created_event_with_a_safe_id_counts(stream: bytes) -> None:
    tap, owners = _tap()
    tap.feed(stream)
    assert not tap.open
    assert len(owners) == 0


def test_a_first_event_over_the_limit_is_not_read() -> None:
    tap, owners = _tap(limit=40)
    tap.feed(STREAM[:30])
    assert tap.open
    tap.feed(STREAM[30:50])
    assert not tap.open
    assert len(owners) == 0


def test_an_answer_that_is_not_a_success_is_not_watched() -> None:
    owners = ResponseOwners(ResponsesSettings())
    tap = CreatedResponse(owners, "alice", "m", 1 << 20)
    assert not tap.begin("up:8000", 400, False)
    assert tap.begin("up:8000", 201, False)


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps(RESPONSE),
        b' \n{ "id" : "resp_abc", "object": "response"}',
        orjson.dumps({"object": "response", "id": "resp_abc"}),  # id not first: parsed
    ],
)
def test_a_whole_json_answer(body: bytes) -> None:
    tap, owners = _tap(sse=False)
    tap.whole(body)
    assert _known(owners) == {"resp_abc": OWNER}


@pytest.mark.parametrize(
    "body", [b"[1]", b"not json", orjson.dumps({"id": "resp abc"}), orjson.dumps({"x": 1})]
)
def test_a_whole_json_answer_without_a_safe_id(body: bytes) -> None:
    tap, owners = _tap(sse=False)
    tap.whole(body)
    assert len(owners) == 0


def test_a_json_answer_in_pieces_is_read_from_its_head_only() -> None:
    tap, owners = _tap(sse=False)
    body = orjson.dumps({**RESPONSE, "output": "x" * 5000})
    tap.feed(body[:5])
    tap.feed(body[5:12])
    assert tap.open
    tap.feed(body[12:20])
    assert not tap.open
    assert _known(owners) == {"resp_abc": OWNER}
    late, owners = _tap(sse=False)
    for at in range(0, 600, 100):  # the id comes after the first 512 bytes: not looked for
        late.feed(orjson.dumps({"pad": "x" * 600, "id": "resp_abc"})[at : at + 100])
    assert not late.open and len(owners) == 0


def test_a_whole_stream_answer() -> None:
    tap, owners = _tap()
    tap.whole(STREAM)
    assert not tap.open
    assert _known(owners) == {"resp_abc": OWNER}
