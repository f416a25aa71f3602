"""UsageTap and usage_of: usage read from what the upstream relays, byte for byte intact."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from bastion.pipeline import meter
from bastion.pipeline.meter import Meter, UsageTap, billed, json_usage, usage_of

USAGE = {"prompt_tokens": 12, "total_tokens": 19, "completion_tokens": 7}


def chat_chunk(choices: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-8f2c",
        "object": "chat.completion.chunk",
        "created": 1718452800,
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "choices": choices,
        **extra,
    }


def delta(content: str, role: str | None = None, finish: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"role": role, "content": content} if role else {"content": content}
    return {"index": 0, "delta": body, "logprobs": None, "finish_reason": finish}


CONTENT_CHUNKS = [
    chat_chunk([delta("", role="assistant")]),
    chat_chunk([delta("Hel")]),
    chat_chunk([delta("lo, \\n\\n")]),  # escaped line breaks in the text
    chat_chunk([delta('the "usage" word')]),  # the key's name, quoted, in the text
    chat_chunk([delta(" world")]),
    chat_chunk([delta("", finish="stop")]),
]
USAGE_CHUNK = chat_chunk([], usage=USAGE)


@dataclass(frozen=True)
class Stream:
    """A stream as vLLM sends it, and what the caller must get of it."""

    events: tuple[bytes, ...]
    usage_index: int | None
    content_events: int

    @property
    def raw(self) -> bytes:
        return b"".join(self.events)

    def relayed(self, strip: bool) -> bytes:
        return b"".join(
            e for i, e in enumerate(self.events) if not (strip and i == self.usage_index)
        )

    def relayed_before(self, offset: int, strip: bool) -> bytes:
        """What the caller must have got once ``offset`` bytes have arrived: whole events."""
        out, end = [], 0
        for i, event in enumerate(self.events):
            end += len(event)
            if end > offset:
                break
            if not (strip and i == self.usage_index):
                out.append(event)
        return b"".join(out)


Dump = Callable[[Any], bytes]


def compact(value: Any) -> bytes:
    return orjson.dumps(value)


def spaced(value: Any) -> bytes:
    return json.dumps(value).encode()  # ", " and ": " as Python's json writes them


def stream(
    prefix: bytes = b"data: ",
    end: bytes = b"\n\n",
    dump: Dump = compact,
    chunks: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = USAGE_CHUNK,
) -> Stream:
    chunks = CONTENT_CHUNKS if chunks is None else chunks
    events = [prefix + dump(c) + end for c in chunks]
    usage_index = None
    if usage is not None:
        usage_index = len(events)
        events.append(prefix + dump(usage) + end)
    events.append(prefix + b"[DONE]" + end)
    return Stream(tuple(events), usage_index, sum(1 for c in chunks if c["choices"]))


FORMS: dict[str, dict[str, Any]] = {
    "vllm": {},
    "no-space": {"prefix": b"data:"},
    "two-spaces": {"prefix": b"data:  "},
    "spaced-json": {"dump": spaced},
    "crlf": {"end": b"\r\n\r\n"},
    "crlf-no-space-spaced-json": {"prefix": b"data:", "end": b"\r\n\r\n", "dump": spaced},
    "crlf-lines-lf-end": {"end": b"\r\n\n"},
}
"""How servers write their events: the data prefix, the blank line, the JSON's spacing."""
VARIANTS = {name: stream(**form) for name, form in FORMS.items()}


def run(tap: UsageTap, pieces: list[bytes]) -> bytes:
    return b"".join(tap.feed(p) for p in pieces) + tap.end()


@pytest.fixture(params=list(VARIANTS), ids=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> Stream:
    return VARIANTS[request.param]


@pytest.mark.parametrize("strip", [True, False], ids=["strip", "keep"])
def test_a_stream_split_anywhere_is_relayed_whole_minus_only_the_usage_chunk(
    variant: Stream, strip: bool
) -> None:
    raw = variant.raw
    for cut in range(len(raw) + 1):
        tap = UsageTap(sse=True, strip=strip)
        assert run(tap, [raw[:cut], raw[cut:]]) == variant.relayed(strip), cut
        assert tap.usage == (12, 7), cut
        assert tap.content_events == variant.content_events == 6, cut


@pytest.mark.parametrize("strip", [True, False], ids=["strip", "keep"])
def test_whole_events_go_on_as_soon_as_they_have_arrived(variant: Stream, strip: bool) -> None:
    raw = variant.raw
    tap = UsageTap(sse=True, strip=strip)
    relayed = b""
    for offset in range(len(raw)):
        relayed += tap.feed(raw[offset : offset + 1])
        assert relayed == variant.relayed_before(offset + 1, strip), offset
    assert tap.end() == b""
    assert tap.usage == (12, 7)
    assert tap.content_events == variant.content_events


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("strip", [True, False], ids=["strip", "keep"])
def test_a_stream_in_random_pieces(variant: Stream, strip: bool, seed: int) -> None:
    rng = random.Random(seed)
    raw = variant.raw
    for _ in range(40):
        cuts = sorted(rng.sample(range(len(raw) + 1), rng.randrange(1, 12)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        tap = UsageTap(sse=True, strip=strip)
        assert run(tap, pieces) == variant.relayed(strip)
        assert (tap.usage, tap.content_events) == ((12, 7), variant.content_events)


def test_a_stream_in_one_piece(variant: Stream) -> None:
    tap = UsageTap(sse=True, strip=True)
    assert tap.feed(variant.raw) == variant.relayed(True)
    assert tap.end() == b""
    assert (tap.usage, tap.content_events) == ((12, 7), variant.content_events)


def test_a_stream_cut_before_its_usage_counts_what_was_relayed(variant: Stream) -> None:
    assert variant.usage_index is not None
    raw = variant.raw
    ends = [sum(map(len, variant.events[: i + 1])) for i in range(len(variant.events))]
    usage_starts = ends[variant.usage_index - 1]
    for strip in (True, False):
        for cut in range(usage_starts + 1):
            tap = UsageTap(sse=True, strip=strip)
            assert run(tap, [raw[:cut]]) == raw[:cut]
            assert tap.usage is None
            # every event before the usage chunk has content: those that ended are counted
            assert tap.content_events == sum(1 for end in ends if end <= cut), cut
        for cut in range(usage_starts, usage_starts + len(variant.events[variant.usage_index])):
            tap = UsageTap(sse=True, strip=strip)
            tap.feed(raw[:cut])
            tap.end()
            assert tap.usage is None  # the usage event never ended
            assert tap.content_events == 6


def test_a_stream_without_a_usage_chunk_is_relayed_as_is() -> None:
    plain = stream(usage=None)
    for strip in (True, False):
        tap = UsageTap(sse=True, strip=strip)
        assert run(tap, [plain.raw[:100], plain.raw[100:]]) == plain.raw
        assert (tap.usage, tap.content_events) == (None, 6)


def test_a_usage_chunk_the_caller_asked_for_is_kept() -> None:
    vllm = VARIANTS["vllm"]
    tap = UsageTap(sse=True, strip=False)
    assert tap.feed(vllm.raw) == vllm.raw
    assert tap.usage == (12, 7)


def test_usage_in_every_chunk_is_followed_and_chunks_with_choices_are_never_dropped() -> None:
    # continuous usage stats: each content chunk reports the usage so far
    chunks = [
        chat_chunk([delta("a")], usage={"prompt_tokens": 12, "completion_tokens": 1}),
        chat_chunk([delta("b")], usage={"prompt_tokens": 12, "completion_tokens": 2}),
    ]
    continuous = stream(chunks=chunks, usage=chat_chunk([], usage=USAGE))
    tap = UsageTap(sse=True, strip=True)
    assert tap.feed(continuous.raw[:-20]) == b"".join(continuous.events[:2])
    assert tap.usage == (12, 2)
    assert tap.content_events == 2
    assert tap.feed(continuous.raw[-20:]) == continuous.events[-1]
    assert tap.usage == (12, 7)


def test_null_usage_in_content_chunks_is_ignored() -> None:
    chunks = [chat_chunk([delta(t)], usage=None) for t in ("a", "b", "c")]
    nulls = stream(chunks=chunks, usage=chat_chunk([], usage=USAGE))
    tap = UsageTap(sse=True, strip=True)
    assert tap.feed(nulls.raw) == nulls.relayed(True)
    assert (tap.usage, tap.content_events) == ((12, 7), 3)


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"choices": [], "usage": {"prompt_tokens": 3,}}\n\n',  # malformed JSON
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens"\n\n',  # truncated
        b'data: {"choices": [], "usage": {"prompt_tokens": -3, "completion_tokens": 1}}\n\n',
        b'data: {"choices": [], "usage": "none"}\n\n',
        b'data: ["usage"]\n\n',
        b'data: "usage"\n\n',
        b': a comment with "usage" in it\n\n',
        b'event: done\ndata: {"choices": [], "usage": {"prompt_tokens": 1}}\n\n',
        b'data: \xff\xfe"usage"\n\n',  # not even UTF-8
    ],
)
def test_an_event_whose_usage_cannot_be_read_passes_through_untouched(event: bytes) -> None:
    vllm = VARIANTS["vllm"]
    before, after = vllm.events[:2], vllm.events[2:]
    raw = b"".join(before) + event + b"".join(after)
    for strip in (True, False):
        for cut in (0, len(b"".join(before)) + 5, len(raw) - 3):
            tap = UsageTap(sse=True, strip=strip)
            expected = b"".join(before) + event + vllm.relayed(strip)[len(b"".join(before)) :]
            assert run(tap, [raw[:cut], raw[cut:]]) == expected
            assert tap.usage == (12, 7)  # from the real usage chunk, later
            assert tap.content_events == 6


def test_only_the_usage_only_chunk_is_dropped_even_when_events_share_a_piece() -> None:
    vllm = VARIANTS["vllm"]
    assert vllm.usage_index is not None
    around = vllm.events[vllm.usage_index - 1 : vllm.usage_index + 2]
    tap = UsageTap(sse=True, strip=True)
    assert tap.feed(b"".join(around)) == around[0] + around[2]
    assert (tap.usage, tap.content_events) == ((12, 7), 1)


def test_a_partial_event_is_held_back_until_its_end() -> None:
    tap = UsageTap(sse=True, strip=True)
    assert tap.feed(b'data: {"choices":[{"delta":{}}]}\n') == b""
    assert tap.content_events == 0
    assert tap.feed(b"\n" + b"data: [DO") == b'data: {"choices":[{"delta":{}}]}\n\n'
    assert tap.content_events == 1
    assert tap.end() == b"data: [DO"  # a cut stream: what is left goes on as it is
    assert tap.end() == b""


# --- events larger than the limit --------------------------------------------------------

LIMIT = 400
"""A limit on held events above every event of VARIANTS, below BIG's."""
BIG = chat_chunk([delta("y" * 800)])


def with_big(form: dict[str, Any], **extra: Any) -> Stream:
    """A stream with an event larger than LIMIT among its content events."""
    return stream(chunks=[*CONTENT_CHUNKS[:2], BIG, *CONTENT_CHUNKS[2:]], **form, **extra)


@pytest.fixture(params=list(FORMS), ids=list(FORMS))
def form(request: pytest.FixtureRequest) -> dict[str, Any]:
    return FORMS[request.param]


@pytest.mark.parametrize("strip", [True, False], ids=["strip", "keep"])
def test_an_event_over_the_limit_goes_on_unread_and_the_stream_after_it_is_read(
    form: dict[str, Any], strip: bool
) -> None:
    big = with_big(form)
    raw = big.raw
    # only the third event is over the limit
    assert max(len(e) for i, e in enumerate(big.events) if i != 2) < LIMIT < len(big.events[2])
    cuts = [[raw[:cut], raw[cut:]] for cut in range(len(raw) + 1)]
    for pieces in [*cuts, [raw[i : i + 1] for i in range(len(raw))]]:
        tap = UsageTap(sse=True, strip=strip, max_event_bytes=LIMIT)
        assert run(tap, pieces) == big.relayed(strip), len(pieces[0])
        assert tap.usage == (12, 7)
        assert tap.content_events == big.content_events == 7


def test_a_big_event_goes_on_as_it_arrives_once_past_the_limit(form: dict[str, Any]) -> None:
    big = with_big(form)
    raw = big.raw
    starts = len(b"".join(big.events[:2]))  # the big event is the third
    ends = starts + len(big.events[2])
    tap = UsageTap(sse=True, strip=True, max_event_bytes=LIMIT)
    relayed = b""
    for received in range(1, len(raw) + 1):
        relayed += tap.feed(raw[received - 1 : received])
        if starts < received < ends and received - starts > LIMIT:
            assert relayed == raw[:received], received  # held no longer
        else:
            assert relayed == big.relayed_before(received, True), received
    assert tap.end() == b""


def test_a_usage_event_over_the_limit_goes_on_unread_and_usage_is_then_estimated() -> None:
    padded = stream(usage=chat_chunk([], usage=USAGE, padding="z" * 1000))
    tap_meter = Meter(50, reading=True, strip=True, max_event_bytes=LIMIT)
    assert tap_meter.start(True)
    raw = padded.raw
    relayed = b"".join(tap_meter.feed(raw[i : i + 7]) for i in range(0, len(raw), 7))
    relayed += tap_meter.end()
    assert relayed == raw  # not even the usage chunk the caller did not ask for is dropped
    assert tap_meter.usage is None
    assert tap_meter.billed(200, True, len(raw)) == (50, 6)  # the prompt estimate, one per event


def test_a_whole_body_with_an_event_over_the_limit() -> None:
    big = with_big({})
    whole = Meter(50, reading=True, strip=True, max_event_bytes=LIMIT)
    assert whole.whole(big.raw, True) == big.relayed(True)
    assert (whole.usage, whole.content_events) == ((12, 7), 7)


@pytest.mark.parametrize(("size", "piece"), [(500_000, 100), (3_000_000, 1000)])
def test_an_event_in_many_pieces_is_scanned_once(
    monkeypatch: pytest.MonkeyPatch, size: int, piece: int
) -> None:
    """Linear: each byte is looked at for an event's end once, however the event is cut
    (plus, per piece, the few bytes before it where a blank line may have begun, and once
    the rest of the piece in which an event over the limit ends)."""
    scanned = 0

    def counting(find: Callable[[bytes], int]) -> Callable[[bytes], int]:
        def counted(data: bytes) -> int:
            nonlocal scanned
            scanned += len(data)
            return find(data)

        return counted

    monkeypatch.setattr(meter, "_last_end", counting(meter._last_end))
    monkeypatch.setattr(meter, "_first_end", counting(meter._first_end))
    vllm = VARIANTS["vllm"]
    event = b'data: {"choices":[{"delta":{"content":"' + b"x" * size + b'"}}]}\n\n'
    raw = event + vllm.raw
    pieces = [raw[i : i + piece] for i in range(0, len(raw), piece)]
    tap = UsageTap(sse=True, strip=True)
    assert run(tap, pieces) == event + vllm.relayed(True)
    assert (tap.usage, tap.content_events) == ((12, 7), 7)
    assert scanned <= len(raw) + 3 * len(pieces) + piece


def test_what_is_held_of_an_unfinished_event_is_bounded() -> None:
    """An 8 MiB event without its blank line: at most about the limit (1 MiB by default) is
    held, the rest goes on as it arrives."""
    piece = b"x" * 4096
    tracemalloc.start()
    try:
        tap = UsageTap(sse=True, strip=True)
        relayed = len(tap.feed(b'data: {"choices":[{"delta":{"content":"'))
        for _ in range(2048):
            relayed += len(tap.feed(piece))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**20
    assert relayed > 2048 * len(piece) - 2**20 - len(piece)


# --- a JSON body --------------------------------------------------------------------------


COMPLETION = orjson.dumps(
    {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26},
    }
)


@pytest.mark.parametrize("strip", [True, False])
def test_a_json_body_goes_on_untouched_and_its_usage_is_read_at_the_end(strip: bool) -> None:
    for cut in range(len(COMPLETION) + 1):
        tap = UsageTap(sse=False, strip=strip)
        assert tap.feed(COMPLETION[:cut]) == COMPLETION[:cut]
        assert tap.feed(COMPLETION[cut:]) == COMPLETION[cut:]
        assert tap.usage is None  # not before the end
        assert tap.end() == b""
        assert tap.usage == (21, 5)
        assert tap.content_events == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"object": "chat.completion", "choices": []}',
        b'{"usage": null}',
        b"[1, 2]",
        COMPLETION[:-1],
    ],
)
def test_a_json_body_without_readable_usage_reports_none(body: bytes) -> None:
    tap = UsageTap(sse=False, strip=True)
    assert tap.feed(body) == body
    assert tap.end() == b""
    assert tap.usage is None


def test_a_json_body_padded_to_near_the_tail_limit_is_still_read() -> None:
    document = orjson.loads(COMPLETION)
    document["choices"][0]["message"]["content"] = "x" * 60_000
    body = orjson.dumps(document)
    tap = UsageTap(sse=False, strip=False)
    for start in range(0, len(body), 1000):
        tap.feed(body[start : start + 1000])
    tap.end()
    assert tap.usage == (21, 5)


# --- usage_of and billed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (None, None),
        ([], None),
        ("usage", None),
        ({}, None),
        ({"usage": None}, None),
        ({"usage": []}, None),
        ({"usage": {}}, None),
        ({"usage": {"completion_tokens": 5}}, None),
        ({"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}, (5, 7)),
        ({"usage": {"prompt_tokens": 0, "completion_tokens": 0}}, (0, 0)),
        ({"usage": {"prompt_tokens": 8, "total_tokens": 8}}, (8, 0)),  # embeddings
        ({"usage": {"prompt_tokens": -1, "completion_tokens": 7}}, None),
        ({"usage": {"prompt_tokens": 5, "completion_tokens": -3}}, (5, 0)),
        ({"usage": {"prompt_tokens": 5, "completion_tokens": None}}, None),
        ({"usage": {"prompt_tokens": "5", "completion_tokens": 1}}, None),
        ({"usage": {"prompt_tokens": 5.0, "completion_tokens": 1}}, None),
        ({"usage": {"prompt_tokens": 5, "completion_tokens": 1.5}}, None),
        ({"usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}}, (9, 4)),
        ({"usage": {"input_tokens": 9}}, (9, 0)),
        ({"usage": {"input_tokens": -9, "output_tokens": 4}}, None),
        ({"usage": {"input_tokens": 9, "output_tokens": -4}}, (9, 0)),
        (
            {
                "usage": {
                    "prompt_tokens": 1,
                    "input_tokens": 2,
                    "completion_tokens": 3,
                    "output_tokens": 4,
                }
            },
            (1, 3),
        ),
    ],
)
def test_usage_of(document: Any, expected: tuple[int, int] | None) -> None:
    assert usage_of(document) == expected


@pytest.mark.parametrize(
    ("reported", "status", "sse", "expected"),
    [
        ((30, 40), 200, True, (30, 40)),
        ((30, 40), 500, False, (30, 40)),
        (None, 200, True, (100, 6)),
        (None, 200, False, (100, 250)),
        (None, 400, True, (0, 0)),
        (None, 429, False, (0, 0)),
        (None, 502, True, (0, 0)),
        (None, 399, False, (100, 250)),
    ],
)
def test_billed(
    reported: tuple[int, int] | None, status: int, sse: bool, expected: tuple[int, int]
) -> None:
    assert (
        billed(
            reported,
            status=status,
            sse=sse,
            prompt_estimate=100,
            content_events=6,
            response_bytes=1001,
        )
        == expected
    )


def responses_event(kind: str, **data: Any) -> bytes:
    """An event of the Responses API's stream, as vLLM writes it (``event:`` and ``data:``)."""
    return f"event: {kind}\ndata: ".encode() + orjson.dumps({**data, "type": kind}) + b"\n\n"


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("terminal", ["response.completed", "response.incomplete"])
def test_a_responses_stream_reports_usage_in_its_terminal_event(strip: bool, terminal: str) -> None:
    """The Responses API has no usage chunk: the last event's response carries it. Read it,
    and never drop that event (the gateway's stream_options do not apply to it)."""
    usage = {"input_tokens": 500, "output_tokens": 400, "total_tokens": 900}
    stream = b"".join(
        [
            responses_event("response.created", response={"id": "r", "usage": None}),
            *(responses_event("response.output_text.delta", delta="x") for _ in range(3)),
            responses_event(terminal, response={"id": "r", "usage": usage}),
        ]
    )
    tap = UsageTap(sse=True, strip=strip)
    assert tap.feed(stream) + tap.end() == stream
    assert tap.usage == (500, 400)


JSON_BODIES = [
    b'{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,'
    b'"completion_tokens":16,"total_tokens":28}}',
    # usage before other top-level keys (vLLM adds some after it)
    b'{"id":"x","usage": {"prompt_tokens": 3, "completion_tokens": 4}, "prompt_logprobs": null,'
    b' "kv_transfer_params": {"a": [1, {"b": 2}]}}\n',
    # the last "usage" key is nested: the tail does not parse, the whole body is read
    b'{"usage":{"prompt_tokens":5,"completion_tokens":6},"extra":{"usage":{"prompt_tokens":9,'
    b'"completion_tokens":9}}}',
    # only nested (Anthropic's and the Responses API's stream events nest it)
    b'{"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}',
    b'{"response":{"usage":{"input_tokens":7,"output_tokens":2}}}',
    # a key that merely ends in usage, holding what a usage object would
    b'{"x\\"usage":{"prompt_tokens":0,"completion_tokens":0},"usage":null}',
    b'{"x\\"usage":{"prompt_tokens":0,"completion_tokens":0}}',
    b'{"usage":null}',
    b'{"usage":{"prompt_tokens":1,"completion_tokens":2}',  # cut short
    b'{"content":"the text \\"usage\\": {\\"prompt_tokens\\": 1} in a string","usage":'
    b'{"prompt_tokens":8,"completion_tokens":9}}',
    b'[{"usage":{"prompt_tokens":1,"completion_tokens":2}}]',
]


@pytest.mark.parametrize("body", JSON_BODIES)
def test_json_usage_reads_what_parsing_the_whole_body_reads(body: bytes) -> None:
    try:
        whole = usage_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        whole = None
    assert json_usage(body) == whole
