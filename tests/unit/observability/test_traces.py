"""The trace exporter against a real OTLP/HTTP receiver: batches, retries, drops, shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from bastion.observability import otlp
from bastion.observability.traces import TraceExporter
from bastion.settings import Secret, TracingSettings
from tests.support.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver().start()
    yield found
    found.stop()


def _span(number: int) -> bytes:
    return otlp.span(
        trace_id=number.to_bytes(16, "big"),
        span_id=number.to_bytes(8, "big"),
        parent_id=None,
        name=f"span {number}",
        kind=otlp.SERVER,
        start_ns=1,
        end_ns=2,
        attributes=otlp.attribute("n", number),
    )


def _exporter(url: str, **settings: object) -> TraceExporter:
    given = {"endpoint": url, "export_interval": 0.05, **settings}
    return TraceExporter(TracingSettings(enabled=True, **given))  # type: ignore[arg-type]


async def _until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


async def test_spans_are_exported_in_batches(receiver: OtlpReceiver) -> None:
    exporter = _exporter(receiver.url, max_batch_spans=4, headers={"x-key": Secret(value="s3")})
    exporter.start()
    try:
        exporter.add([_span(n) for n in range(1, 4)])
        exporter.add([_span(n) for n in range(4, 11)])
        await _until(lambda: exporter.exported == 10)
    finally:
        await exporter.stop()
    assert sorted(s.name for s in receiver.spans) == sorted(f"span {n}" for n in range(1, 11))
    assert len(receiver.exports) >= 3  # at most 4 spans each
    assert all(e["x-key"] == "s3" for e in receiver.exports)
    assert receiver.spans[0].resource["service.name"] == "bastion"
    assert exporter.dropped == exporter.failed_exports == 0


async def test_an_unavailable_collector_is_tried_again(receiver: OtlpReceiver) -> None:
    receiver.unavailable = 2
    exporter = _exporter(receiver.url)
    exporter.start()
    try:
        exporter.add([_span(1)])
        await _until(lambda: exporter.exported == 1)
    finally:
        await exporter.stop()
    assert len(receiver.exports) == 3 and exporter.dropped == 0


async def test_a_refused_export_is_dropped_counted_and_logged_once(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.status = 400
    exporter = _exporter(receiver.url, headers={"authorization": Secret(value="Bearer hush")})
    exporter.start()
    try:
        with caplog.at_level(logging.WARNING, "bastion"):
            exporter.add([_span(1), _span(2)])
            await _until(lambda: exporter.failed_exports == 1)
            exporter.add([_span(3)])
            await _until(lambda: exporter.failed_exports == 2)
    finally:
        await exporter.stop()
    assert len(receiver.exports) == 2  # a 400 is not retried
    assert exporter.dropped == 3 and exporter.exported == 0
    failures = [r for r in caplog.records if "trace export" in r.getMessage()]
    assert len(failures) == 1
    assert "HTTP 400" in failures[0].getMessage()
    assert "hush" not in caplog.text


async def test_an_unreachable_collector_loses_only_what_it_must() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exporter = _exporter(f"http://127.0.0.1:{port}/v1/traces", timeout=0.5)
    exporter.start()
    exporter.add([_span(1)])
    await _until(lambda: exporter.failed_exports == 1, timeout=10)
    await exporter.stop()
    assert exporter.dropped == 1


async def test_a_full_queue_drops_new_spans(receiver: OtlpReceiver) -> None:
    exporter = _exporter(receiver.url, max_queue_spans=3, export_interval=60)
    exporter.add([_span(1), _span(2)])
    exporter.add([_span(3), _span(4)])  # would be 4 of 3: dropped whole
    exporter.add([_span(5)])
    assert exporter.dropped == 2
    exporter.start()
    await exporter.stop()  # what is queued is sent at the stop
    assert sorted(s.name for s in receiver.spans) == ["span 1", "span 2", "span 5"]
    assert exporter.exported == 3


async def test_gzip(receiver: OtlpReceiver) -> None:
    exporter = _exporter(receiver.url, compression="gzip")
    exporter.start()
    exporter.add([_span(7)])
    await exporter.stop()
    assert receiver.exports[0]["content-encoding"] == "gzip"
    assert receiver.bodies[0][:2] == b"\x1f\x8b"
    assert [s.name for s in receiver.spans] == ["span 7"]


@pytest.mark.parametrize(
    "url",
    ["http://user:pw@127.0.0.1:4318/v1/traces", "http://127.0.0.1:99999/v1/traces"],
)
def test_a_bad_endpoint_is_a_configuration_error(url: str) -> None:
    from bastion.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        _exporter(url)
    assert "pw" not in str(caught.value)
